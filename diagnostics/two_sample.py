"""Two-sample distances to reference draws: the classifier two-sample test and MMD.

C2ST (Lopez-Paz & Oquab 2017; the sbibm metric of Lueckmann et al. 2021): a classifier is
trained to tell draws ``X`` from reference draws ``Y``; its held-out accuracy is 0.5 when
the two distributions agree and 1 when they are disjoint. Inputs are standardised with the
reference's mean and sd, as in sbibm. One balanced train/test split is used rather than
cross-validation: given the trained classifier, each held-out prediction is then a fair
coin under equality, so the number of correct predictions is exactly Binomial(n, 1/2)
(cross-validated predictions share training data and are over-dispersed).

MMD (Gretton et al. 2012): the unbiased estimate of the squared maximum mean discrepancy
with a Gaussian kernel, bandwidth by the median heuristic on the pooled sample, and a
permutation p-value (the kernel matrix is computed once; permutations relabel it).

References:
    Lopez-Paz, Oquab (2017). Revisiting classifier two-sample tests. ICLR.
    Lueckmann, Boelts, Greenberg, Goncalves, Macke (2021). Benchmarking simulation-based
    inference. AISTATS.
    Gretton, Borgwardt, Rasch, Schoelkopf, Smola (2012). A kernel two-sample test. JMLR 13.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

__all__ = ["C2STResult", "MMDResult", "c2st", "mmd", "posterior_matrix"]


class C2STResult(NamedTuple):
    """Cross-validated classifier accuracy, its binomial p-value, and the sample size."""

    accuracy: float
    p_value: float
    num_samples: int

    def passed(self, level: float = 0.01) -> bool:
        return bool(self.p_value >= level)


class MMDResult(NamedTuple):
    """Unbiased MMD^2, the kernel bandwidth and the permutation p-value."""

    mmd2: float
    bandwidth: float
    p_value: float

    def passed(self, level: float = 0.01) -> bool:
        return bool(self.p_value >= level)


def posterior_matrix(posterior, sites=None) -> np.ndarray:
    """A Posterior's draws as one ``(num_draws, dim)`` matrix (sites flattened, in order).

    Weighted posteriors are resampled to equal weights first.
    """
    posterior = posterior.resample()
    sites = list(posterior.samples) if sites is None else list(sites)
    cols = [posterior.flat(s).reshape(posterior.flat(s).shape[0], -1) for s in sites]
    return np.concatenate(cols, axis=1)


def _as_matrix(name: str, x: Any) -> np.ndarray:
    if hasattr(x, "samples") and hasattr(x, "resample"):  # a ppl Posterior
        x = posterior_matrix(x)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"Expected {name} shaped (num_draws, dim), got {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"Expected finite {name}, got NaN or inf.")
    return x


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if x.shape[0] <= n else x[rng.choice(x.shape[0], n, replace=False)]


def c2st(
    x: Any,
    reference: Any,
    *,
    seed: int = 0,
    max_samples: int = 2000,
    classifier: str = "mlp",
    max_iter: int = 100,
) -> C2STResult:
    """Classifier two-sample test between draws ``x`` and ``reference`` draws.

    Args:
        x: ``(n, dim)`` draws, or a ppl Posterior.
        reference: ``(m, dim)`` reference draws, or a ppl Posterior.
        seed: seed for subsampling, folds and the classifier.
        max_samples: use at most this many draws from each side (half train, half test).
        classifier: ``"mlp"`` (two hidden layers of ``10 dim`` units, as sbibm) or
            ``"knn"`` (a 25-nearest-neighbour vote, faster, weaker).
        max_iter: training epochs of the MLP at most (early stopping on a validation split).

    Returns:
        A :class:`C2STResult`; accuracy 0.5 means indistinguishable.
    """
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    x = _as_matrix("x", x)
    reference = _as_matrix("reference", reference)
    if x.shape[1] != reference.shape[1]:
        raise ValueError(
            f"Expected x and reference with the same dim, got {x.shape[1]} and "
            f"{reference.shape[1]}."
        )
    if classifier not in ("mlp", "knn"):
        raise ValueError(f"Expected classifier 'mlp' or 'knn', got {classifier!r}.")
    rng = np.random.default_rng(seed)
    n = min(x.shape[0], reference.shape[0], max_samples)
    x, reference = _subsample(x, n, rng), _subsample(reference, n, rng)
    loc, scale = reference.mean(axis=0), reference.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    features = (np.concatenate([x, reference]) - loc) / scale
    labels = np.concatenate([np.zeros(n), np.ones(n)])
    dim = x.shape[1]
    if classifier == "mlp":
        model = MLPClassifier(
            hidden_layer_sizes=(10 * dim, 10 * dim), activation="relu", max_iter=max_iter,
            solver="adam", early_stopping=True, n_iter_no_change=10, random_state=seed,
        )
    else:
        model = KNeighborsClassifier(n_neighbors=25)
    # Balanced split: the first half of each side trains, the second half tests.
    half = n // 2
    train = np.r_[0:half, n : n + half]
    test = np.r_[half:n, n + half : 2 * n]
    model.fit(features[train], labels[train])
    correct = int(np.sum(model.predict(features[test]) == labels[test]))
    p_value = float(scipy.stats.binom.sf(correct - 1, test.size, 0.5))
    return C2STResult(correct / test.size, p_value, int(test.size))


@jax.jit
def _mmd_permutations(key, pooled, labels, bandwidth, num_permutations_array):
    """Unbiased MMD^2 for the observed labels and for random relabellings (rows)."""
    sq = jnp.sum(pooled**2, axis=1)
    dist2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)
    kernel = jnp.exp(-dist2 / (2 * bandwidth**2))
    kernel = kernel - jnp.diag(jnp.diag(kernel))  # i != j terms only
    keys = jax.random.split(key, num_permutations_array.shape[0])
    perms = jax.vmap(lambda k: jax.random.permutation(k, labels))(keys)
    a = jnp.concatenate([labels[None], perms]).astype(kernel.dtype)  # (1 + P, n_x + n_y)
    b = 1.0 - a
    m, n = jnp.sum(a[0]), jnp.sum(b[0])
    ka, kb = a @ kernel, b @ kernel
    mmd2 = (jnp.sum(ka * a, 1) / (m * (m - 1)) + jnp.sum(kb * b, 1) / (n * (n - 1))
            - 2 * jnp.sum(ka * b, 1) / (m * n))
    return mmd2[0], mmd2[1:]


def mmd(
    x: Any,
    reference: Any,
    *,
    key: jax.Array,
    max_samples: int = 1000,
    num_permutations: int = 200,
) -> MMDResult:
    """Unbiased squared MMD with a Gaussian kernel and a permutation p-value.

    Args:
        x: ``(n, dim)`` draws, or a ppl Posterior.
        reference: ``(m, dim)`` reference draws, or a ppl Posterior.
        key: PRNG key (subsampling and permutations).
        max_samples: use at most this many draws from each side.
        num_permutations: permutations for the p-value.
    """
    x = _as_matrix("x", x)
    reference = _as_matrix("reference", reference)
    if x.shape[1] != reference.shape[1]:
        raise ValueError(
            f"Expected x and reference with the same dim, got {x.shape[1]} and "
            f"{reference.shape[1]}."
        )
    sub_key, perm_key = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(sub_key))[-1])
    x = _subsample(x, max_samples, rng)
    reference = _subsample(reference, max_samples, rng)
    pooled = np.concatenate([x, reference])
    scale = reference.std(axis=0)
    pooled = (pooled - reference.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    labels = jnp.concatenate([jnp.ones(x.shape[0], bool), jnp.zeros(reference.shape[0], bool)])
    # Median heuristic on (at most 1000 of) the pooled points: k(a, b) = exp(-|a-b|^2 / 2 h^2).
    from scipy.spatial.distance import pdist

    some = pooled[rng.choice(pooled.shape[0], min(1000, pooled.shape[0]), replace=False)]
    bandwidth = float(np.sqrt(0.5 * np.median(pdist(some, "sqeuclidean"))))
    bandwidth = bandwidth if bandwidth > 0 else 1.0
    observed, permuted = _mmd_permutations(
        perm_key, jnp.asarray(pooled, jnp.float32), labels, bandwidth, jnp.zeros(num_permutations)
    )
    permuted = np.asarray(permuted)
    p_value = (1 + np.sum(permuted >= float(observed))) / (1 + num_permutations)
    return MMDResult(float(observed), float(bandwidth), float(p_value))
