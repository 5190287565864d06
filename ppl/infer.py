"""``ppl.infer``: the one facade over every engine."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ppl.model import AbstractModel
from ppl.posterior import Posterior
from ppl.registry import get_engine

__all__ = ["infer", "as_key", "UnknownSettingError"]


class UnknownSettingError(TypeError, ValueError):
    """A setting an engine does not take (a ``TypeError``, as Python's own for an unknown
    keyword, and a ``ValueError``, the user errors the command line reports in one line)."""


def _known_settings(engine: Callable) -> set[str] | None:
    """The setting names ``engine`` takes: its keyword parameters, following ``**settings``
    into the functions listed in its ``settings_from`` attribute, less the names in its
    ``settings_fixed`` (those it passes itself); None when they cannot be known."""
    names, todo, seen, fixed = set(), [engine], set(), set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        fixed |= set(getattr(fn, "settings_fixed", ()))
        for p in parameters:
            if p.kind is p.KEYWORD_ONLY or (
                p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
            ):
                names.add(p.name)
            elif p.kind is p.VAR_KEYWORD:
                forwards = getattr(fn, "settings_from", None)
                if forwards is None:
                    return None
                todo.extend(forwards)
    return names - fixed - {"key", "model"}


def _check_settings(method: str, engine: Callable, settings: dict) -> None:
    """Refuse a setting ``engine`` does not take, naming it and the close matches."""
    known = _known_settings(engine)
    if known is None:
        return
    unknown = sorted(set(settings) - known)
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        parts.append(f"{name!r} (did you mean {' or '.join(map(repr, close))}?)" if close
                     else repr(name))
    raise UnknownSettingError(
        f"Unknown setting(s) for method {method!r}: {', '.join(parts)}. Its settings are: "
        f"{', '.join(sorted(known))}."
    )


def as_key(key: Any) -> jax.Array:
    """Accept a typed or raw JAX PRNG key, or an int seed; refuse anything else."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise ValueError(
        f"Expected key to be a JAX PRNG key (jax.random.key(0)) or an int seed, got {key!r}."
    )


def infer(model: AbstractModel, method: str = "nuts", *, key: Any, **settings: Any) -> Posterior:
    """Run the inference engine ``method`` on ``model``.

    Args:
        model: a ppl Model (``ppl.from_numpyro`` or ``ppl.from_logdensity``).
        method: engine name; ``ppl.available_engines()`` lists them.
        key: a JAX PRNG key (or an int seed).
        **settings: the engine's own settings (see each engine's docstring).

    Returns:
        A :class:`~ppl.Posterior`.

    Raises:
        UnknownSettingError: a setting the engine does not take (the close matches named).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> m = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
        >>> post = ppl.infer(m, "nuts", key=jax.random.key(0), num_chains=2,
        ...                  num_warmup=200, num_samples=200, progress_bar=False)
        >>> post.samples["x"].shape
        (2, 200, 2)
    """
    engine = get_engine(method)
    if not isinstance(model, AbstractModel):
        raise TypeError(
            "Expected a ppl Model (build one with ppl.from_numpyro or ppl.from_logdensity), "
            f"got {type(model).__name__}."
        )
    _check_settings(method, engine, settings)
    return engine(as_key(key), model, **settings)
