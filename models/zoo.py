"""The model zoo: models registered by name, each with its data and, where one exists,
the exact answer (closed-form posterior moments, log-evidence, or reference draws).

Example:
    >>> from ppl import models
    >>> entry = models.get("conjugate_normal")
    >>> model = entry.build()           # a ppl Model on the default data
    >>> round(float(entry.exact()["mean"]["mu"]), 3)     # closed-form posterior mean
    1.519
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["ZooEntry", "register", "get", "names"]


class ZooEntry(NamedTuple):
    """A model with known answers.

    Attributes:
        name: registry name.
        model_fn: the NumPyro model function.
        make_data: ``() -> dict`` of keyword arguments for ``model_fn`` (default data).
        description: one line.
        exact_fn: optional ``data -> dict`` with any of ``"mean"``, ``"sd"`` (dicts by
            site), ``"log_evidence"`` (float); None when no closed form exists.
        reference_fn: optional ``() -> dict`` of reference draws by site (posteriordb),
            each ``(num_draws, *site_shape)``.
        tags: free-form labels ("closed_form", "posteriordb", "state_space", ...).
        state_space_fn: optional ``() -> StateSpace`` (``sample_initial``,
            ``sample_transition``, ``log_observation``) for particle filters, with the
            observations in ``data()["y"]``.
    """

    name: str
    model_fn: Callable
    make_data: Callable[[], dict]
    description: str
    exact_fn: Callable[[dict], dict] | None = None
    reference_fn: Callable[[], dict] | None = None
    tags: tuple[str, ...] = ()
    state_space_fn: Callable[[], Any] | None = None

    def data(self) -> dict:
        return self.make_data()

    def build(self, **overrides: Any):
        """The ppl Model on the default data (keyword arguments override items)."""
        import ppl

        data = {**self.make_data(), **overrides}
        return ppl.from_numpyro(self.model_fn, **data)

    def exact(self, **overrides: Any) -> dict | None:
        """The exact answer for the (default or overridden) data, or None."""
        if self.exact_fn is None:
            return None
        return self.exact_fn({**self.make_data(), **overrides})

    def reference(self) -> dict | None:
        return None if self.reference_fn is None else self.reference_fn()


_ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    _ZOO[entry.name] = entry
    return entry


def names(tag: str | None = None) -> list[str]:
    """Registered model names, optionally only those carrying ``tag``."""
    _load_builtins()
    return sorted(n for n, e in _ZOO.items() if tag is None or tag in e.tags)


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name``."""
    _load_builtins()
    if name not in _ZOO:
        raise ValueError(f"Unknown model {name!r}. Available models: {', '.join(sorted(_ZOO))}.")
    return _ZOO[name]


def _load_builtins() -> None:
    # Importing the modules registers their entries.
    from ppl.models import builtin, posteriordb, state_space  # noqa: F401
