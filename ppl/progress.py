"""Progress bars for compiled loops that do not slow them down.

Two ways to drive a bar: run the loop in ~100 compiled chunks and call
:meth:`ProgressBar.update_to` between them (what NUTS does: a program with a host callback
cannot be stored in JAX's persistent compilation cache), or call :func:`progress_callback`
inside one compiled loop, which reports about a hundred times per run. Bars are off when
stderr is not a terminal.
"""

from __future__ import annotations

import sys

import jax

__all__ = ["ProgressBar", "progress_callback"]

_ACTIVE: list[ProgressBar] = []
_NUM_UPDATES = 100


class ProgressBar:
    """Context manager that owns the bar a compiled loop reports to."""

    def __init__(self, total: int, desc: str = ""):
        self.total = int(total)
        self.desc = desc
        self._bar = None

    @staticmethod
    def wanted(progress_bar: bool | None) -> bool:
        """Explicit choice, else on only when stderr is a terminal."""
        if progress_bar is None:
            return bool(getattr(sys.stderr, "isatty", lambda: False)())
        return bool(progress_bar)

    def __enter__(self):
        if self.total > 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, leave=True, dynamic_ncols=True)
            _ACTIVE.append(self)
        return self

    def update_to(self, step: int, desc: str | None = None) -> None:
        if self._bar is not None:
            if desc is not None and desc != self._bar.desc:
                self._bar.set_description(desc, refresh=False)
            self._bar.update(max(0, min(step, self.total) - self._bar.n))

    def __exit__(self, *exc):
        if self._bar is not None:
            self.update_to(self.total)
            self._bar.close()
            _ACTIVE.remove(self)
        return False


def _host_update(step, every):
    if _ACTIVE:
        _ACTIVE[-1].update_to(int(step) + int(every))


def progress_callback(step, num_steps: int | None = None) -> None:
    """Call inside a compiled loop at every step; reports every ~1% of ``num_steps``."""
    every = max(1, (num_steps or 1000) // _NUM_UPDATES)
    jax.lax.cond(
        step % every == 0,
        lambda s: jax.debug.callback(_host_update, s, every, ordered=False),
        lambda s: None,
        step,
    )
