"""The Posterior: the one result type of every engine."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

__all__ = ["Posterior", "load"]


def _to_numpy(tree: dict[str, Any] | None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in (tree or {}).items()}


@dataclasses.dataclass(frozen=True, eq=False)
class Posterior:
    """Draws from (an approximation of) a posterior, with what the engine learned on the way.

    Attributes:
        samples: constrained draws by site, each shaped ``(chain, draw, *site_shape)``;
            deterministic sites included.
        log_weights: optional ``(chain, draw)`` log importance weights (SMC, importance
            sampling); None when the draws are equally weighted.
        log_evidence: optional estimate of the log marginal likelihood.
        stats: per-draw statistics shaped ``(chain, draw)`` (acceptance rate, divergences,
            tree depth, step size, energy, ...).
        history: per-iteration statistics of the engine (SMC temperatures and ESS,
            ELBO trace, ...), any shapes.
        meta: engine name, settings, wall time, gradient evaluations, warnings.
        log_likelihood: optional pointwise log-likelihood by observed site, each
            ``(chain, draw, *obs_shape)``, for LOO/WAIC through ArviZ.
        unconstrained: optional ``(chain, draw, dim)`` flat unconstrained draws (what
            engines and diagnostics such as PSIS need); not saved by default.
    """

    samples: dict[str, np.ndarray]
    log_weights: np.ndarray | None = None
    log_evidence: float | None = None
    stats: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    history: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    log_likelihood: dict[str, np.ndarray] | None = None
    unconstrained: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "samples", _to_numpy(self.samples))
        object.__setattr__(self, "stats", _to_numpy(self.stats))
        object.__setattr__(self, "history", _to_numpy(self.history))
        if self.log_likelihood is not None:
            object.__setattr__(self, "log_likelihood", _to_numpy(self.log_likelihood))
        if self.log_weights is not None:
            object.__setattr__(self, "log_weights", np.asarray(self.log_weights))
        if self.unconstrained is not None:
            object.__setattr__(self, "unconstrained", np.asarray(self.unconstrained))
        if self.log_evidence is not None:
            object.__setattr__(self, "log_evidence", float(self.log_evidence))
        if not self.samples:
            raise ValueError("A Posterior needs at least one sampled site.")
        shapes = {k: v.shape[:2] for k, v in self.samples.items()}
        if len(set(shapes.values())) != 1 or any(len(s) < 2 for s in shapes.values()):
            raise ValueError(f"Expected samples shaped (chain, draw, ...), got {shapes}.")
        if self.log_weights is not None and self.log_weights.shape != self.shape:
            raise ValueError(
                f"Expected log_weights of shape {self.shape}, got {self.log_weights.shape}."
            )

    # -- shape ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """``(num_chains, num_draws)``."""
        return next(iter(self.samples.values())).shape[:2]

    @property
    def num_chains(self) -> int:
        return self.shape[0]

    @property
    def num_draws(self) -> int:
        return self.shape[1]

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights over all draws, shaped ``(chain, draw)``."""
        if self.log_weights is None:
            return np.full(self.shape, 1.0 / np.prod(self.shape))
        lw = self.log_weights - np.max(self.log_weights)
        w = np.exp(lw)
        return w / w.sum()

    def flat(self, site: str) -> np.ndarray:
        """Draws of one site with chains merged: ``(chain * draw, *site_shape)``."""
        x = self.samples[site]
        return x.reshape((-1,) + x.shape[2:])

    def mean(self, site: str) -> np.ndarray:
        """Posterior mean of a site (weighted when the draws are weighted)."""
        w = self.weights.reshape(-1)
        return np.tensordot(w, self.flat(site), axes=1)

    def std(self, site: str) -> np.ndarray:
        """Posterior standard deviation of a site (weighted when the draws are weighted)."""
        w = self.weights.reshape(-1)
        x = self.flat(site)
        m = np.tensordot(w, x, axes=1)
        return np.sqrt(np.tensordot(w, (x - m) ** 2, axes=1))

    def resample(self, seed: int = 0, num_draws: int | None = None) -> Posterior:
        """Equally weighted draws by multinomial resampling (self when unweighted)."""
        if self.log_weights is None:
            return self
        rng = np.random.default_rng(seed)
        n = num_draws or int(np.prod(self.shape))
        idx = rng.choice(int(np.prod(self.shape)), size=n, p=self.weights.reshape(-1))
        samples = {k: self.flat(k)[idx][None] for k in self.samples}
        unconstrained = None
        if self.unconstrained is not None:
            unconstrained = self.unconstrained.reshape(-1, self.unconstrained.shape[-1])[idx][None]
        return dataclasses.replace(
            self, samples=samples, log_weights=None, stats={}, log_likelihood=None,
            unconstrained=unconstrained, meta={**self.meta, "resampled_from_weighted": True},
        )

    # -- views ----------------------------------------------------------------------------
    def to_arviz(self):
        """The installed ArviZ's container: an ``InferenceData`` with ArviZ 0.x, an
        ``xarray.DataTree`` with ArviZ 1.x (groups posterior, sample_stats, log_likelihood when
        known, ppl_history; :func:`ppl.arviz_bridge.group_names` lists them on both)."""
        from ppl import arviz_bridge

        return arviz_bridge.to_inference_data(self)

    def summary(self, hdi_prob: float = 0.94):
        """A pandas DataFrame, one row per scalar: mean, sd, HDI, MCSE, bulk/tail ESS, R-hat.

        Weighted draws (SMC, importance sampling) are summarised by weighted moments and
        quantiles, with Kish's effective sample size; R-hat does not apply to them.
        """
        from ppl import arviz_bridge

        return arviz_bridge.summary(self, hdi_prob=hdi_prob)

    def __repr__(self) -> str:
        engine = self.meta.get("engine", "?")
        sites = ", ".join(f"{k}{tuple(v.shape[2:])}" for k, v in self.samples.items())
        extra = f", log_evidence={self.log_evidence:.4g}" if self.log_evidence is not None else ""
        return (f"Posterior(engine={engine}, chains={self.num_chains}, draws={self.num_draws}, "
                f"sites=[{sites}]{extra})")

    # -- persistence ----------------------------------------------------------------------
    def save(self, path, *, overwrite: bool = False) -> None:
        """Save to netCDF (through ArviZ/xarray). Refuses to overwrite unless asked.

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is False.
            IsADirectoryError: ``path`` is a directory.
            PermissionError: ``path`` cannot be written (its directory is missing, is not a
                directory, or is read-only); checked before anything is converted.
        """
        import os

        if os.path.isdir(path):
            raise IsADirectoryError(
                f"Cannot save to {path}: it is a directory; pass a file path such as "
                f"{os.path.join(path, 'posterior.nc')}."
            )
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            why = "does not exist" if not os.path.exists(directory) else "is not a directory"
            raise PermissionError(
                f"Cannot save to {path}: its directory {directory} {why}. Create the directory "
                "first, or choose another path."
            )
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError(
                f"Cannot save to {path}: its directory {directory} is not writable. Choose a "
                "writable directory."
            )
        from ppl import arviz_bridge

        try:
            arviz_bridge.save(self, path)
        except OSError as error:
            # h5py's words ("Unable to synchronously create file ...") end in errno codes.
            raise PermissionError(
                f"Cannot save to {path}: {error.strerror or error}. Choose a writable path."
            ) from error


def load(path) -> Posterior:
    """Load a Posterior written by :meth:`Posterior.save`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file ppl did not write (another format, a truncated file, a netCDF
            file without ppl's groups); the message names the file.
    """
    import os

    if not os.path.exists(path):
        raise FileNotFoundError(
            f"No file {path} to load; ppl.load reads the files Posterior.save writes."
        )
    from ppl import arviz_bridge

    return arviz_bridge.load(path)


def _json_default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return repr(obj)


def encode_meta(meta: dict) -> str:
    return json.dumps(meta, default=_json_default)
