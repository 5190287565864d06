"""The distribution transformer: (mixture prior, data set) -> mixture posterior.

Architecture (Whittle et al. 2025), for a prior with ``K`` components and a data set of up
to ``M`` points (a mask marks the observed ``n``):

1. Standardise. ``theta`` is measured in the family's standard frame
   ``theta' = (theta - theta_loc) / theta_scale`` (from the hyper-distribution) and data
   points as ``u = (x - data_loc) / data_scale`` (from simulations), both stored in the
   :class:`TransformerConfig`; the prior is mapped into the frame exactly.
2. Tokens. Component ``k`` is the vector (log weight, mean', log marginal sd', the
   off-diagonal entries of its unit lower-triangular correlation factor), embedded by an
   MLP, plus an embedding of the count ``n``; data point ``i`` is embedded by
   ``W u + (A u) * (B u) + MLP(u)`` (linear, bilinear and nonlinear paths: the bilinear
   one represents the products ``x_j y`` and ``x_j x_l`` that Gaussian sufficient
   statistics are made of; Shazeer 2020, "GLU variants").
3. ``depth`` pre-norm blocks over the component tokens: self-attention among the present
   components, cross-attention to the observed data points (key mask; no points: no
   update), an MLP.
4. Head. ``head="site"`` (the default): every (component, point) pair gives a Gaussian
   site in ``theta'``, a precision factor ``U_ki`` (d x d) and a shift ``h_ki``: an affine
   function of the point's moment features ``(u, u u^T)`` plus a learned correction from
   the point's embedding modulated by the component's final token (the correction starts
   at zero). Component ``k``'s posterior is
   ``prior_k(theta) exp(h_k^T theta - theta^T Lambda_k theta / 2 + gamma_k)`` with
   ``Lambda_k = sum_i U_ki U_ki^T`` and ``h_k = sum_i h_ki`` over observed points,
   computed in closed form (:func:`~ppl.inference.amortized.gmm.multiply_gaussian_site`),
   and ``gamma_k`` a learned correction of its log weight (from the component's token).
   The output is relative to the input by construction: the prior enters the posterior
   exactly, as in a conjugate update (a product of the prior with a Gaussian message, as
   in expectation propagation), and the network learns what the data say. The exact
   posterior of a linear-Gaussian family lies in the model class; for other likelihoods
   the component-dependent correction and ``gamma_k`` adapt the sites to each component.
   ``head="direct"`` (the paper's head) outputs per component a logit change, a mean
   shift in units of the prior component's Cholesky factor and a lower-triangular
   multiplier of that factor; at equal training (1,500 steps, gaussian_mean_2d) its
   errors were about twice the site head's. With no observed point the output is the
   prior itself.

The network is equivariant under permutations of the components (a permuted prior gives
the same posterior mixture, its components permuted) and invariant under permutations of
the data points; absent components (weight zero) and unobserved points do not change the
result. It describes one (prior, data set) pair: batch with ``jax.vmap``.

References:
    Whittle, Ziomek, Rawling & Osborne (2025), Distribution Transformers: Fast Approximate
    Bayesian Inference With On-The-Fly Prior Adaptation, arXiv:2502.02463.
    Lee et al. (2019), Set Transformer, ICML.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ppl.validation import check_count

from .gmm import GaussianMixture, multiply_gaussian_site

__all__ = ["TransformerConfig", "DistributionTransformer", "HEADS", "data_standardization",
           "standardize_mixture", "unstandardize_mixture"]

HEADS = ("site", "direct")
# Initial scale of the head's output layers: the untrained network starts near the prior.
_HEAD_INIT_SCALE = 0.1
# Floor of the log weights fed to the network.
_MIN_LOG_WEIGHT = -30.0


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Architecture hyperparameters and the standardisation constants.

    Attributes:
        dim: ``d``, parameters.
        data_dim: numbers per data point.
        max_points: ``M``, the most data points.
        theta_loc, theta_scale: per-coordinate standardisation of ``theta``.
        data_loc, data_scale: per-column standardisation of the data.
        width: token width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_width: hidden width of the blocks' MLPs.
        head: ``"site"`` or ``"direct"`` (see the module docstring).
    """

    dim: int
    data_dim: int
    max_points: int
    theta_loc: tuple[float, ...]
    theta_scale: tuple[float, ...]
    data_loc: tuple[float, ...]
    data_scale: tuple[float, ...]
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_width: int = 128
    head: str = "site"

    def __post_init__(self):
        for name in ("dim", "data_dim", "max_points", "width", "depth", "num_heads",
                     "mlp_width"):
            check_count(name, getattr(self, name))
        if self.width % self.num_heads:
            raise ValueError(f"Expected width divisible by num_heads ({self.num_heads}), got "
                             f"{self.width}.")
        if self.head not in HEADS:
            raise ValueError(f"Expected head in {HEADS}, got {self.head!r}.")
        for name, size in (("theta_loc", self.dim), ("theta_scale", self.dim),
                           ("data_loc", self.data_dim), ("data_scale", self.data_dim)):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != size:
                raise ValueError(f"Expected {name} to be a tuple of {size} floats, got "
                                 f"{value!r}.")
        if min(self.theta_scale) <= 0 or min(self.data_scale) <= 0:
            raise ValueError(f"Expected positive theta_scale and data_scale, got "
                             f"{self.theta_scale} and {self.data_scale}.")

    def to_json(self) -> dict[str, Any]:
        return {field.name: (list(value) if isinstance(value, tuple) else value)
                for field in dataclasses.fields(self)
                for value in [getattr(self, field.name)]}

    @classmethod
    def from_json(cls, description: dict[str, Any]) -> TransformerConfig:
        return cls(**{key: tuple(float(v) for v in value) if isinstance(value, list) else value
                      for key, value in description.items()})

    def hyperparameters(self) -> dict[str, Any]:
        """The architecture proper (what a user chooses), without the standardisation."""
        return {key: getattr(self, key)
                for key in ("width", "depth", "num_heads", "mlp_width", "head")}


def data_standardization(family, *, num_datasets: int = 2048, seed: int = 0):
    """Per-column mean and standard deviation of observed data points under ``family``
    (fixed seed: the same constants every time); a constant column gets scale 1."""
    keys = jax.random.split(jax.random.key(seed), num_datasets)
    _, _, data, mask = jax.jit(jax.vmap(family.sample_example))(keys)
    weights = mask.astype(jnp.float32)[..., None]
    count = jnp.sum(weights)
    loc = jnp.sum(weights * data, axis=(0, 1)) / count
    scale = jnp.sqrt(jnp.sum(weights * (data - loc) ** 2, axis=(0, 1)) / count)
    constant = scale < 1e-6 * (1.0 + jnp.abs(loc))
    scale = jnp.where(constant, 1.0, scale)
    return (tuple(round(float(v), 6) for v in loc), tuple(round(float(v), 6) for v in scale))


def standardize_mixture(mixture: GaussianMixture, loc, scale) -> GaussianMixture:
    """The mixture of ``(theta - loc) / scale``."""
    loc, scale = jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32)
    return GaussianMixture(mixture.log_weights, (mixture.means - loc) / scale,
                           scale_tril=mixture.scale_tril / scale[:, None], validate=False)


def unstandardize_mixture(mixture: GaussianMixture, loc, scale) -> GaussianMixture:
    """The mixture of ``loc + scale * theta'``."""
    loc, scale = jnp.asarray(loc, jnp.float32), jnp.asarray(scale, jnp.float32)
    return GaussianMixture(mixture.log_weights, loc + scale * mixture.means,
                           scale_tril=mixture.scale_tril * scale[:, None], validate=False)


def _linear(key, in_size, out_size, scale=1.0):
    layer = eqx.nn.Linear(in_size, out_size, key=key)
    if scale != 1.0:
        layer = eqx.tree_at(lambda lin: (lin.weight, lin.bias), layer,
                            (layer.weight * scale, layer.bias * scale))
    return layer


def _num_shape_entries(dim):
    return dim * (dim - 1) // 2


def _component_features(prior: GaussianMixture):
    """(log weight, mean, log sd, correlation-factor entries) of each component."""
    dim = prior.dim
    mask = prior.component_mask
    eye = jnp.eye(dim)
    tril = jnp.where(mask[:, None, None], prior.scale_tril, eye)
    diagonal = jnp.diagonal(tril, axis1=-2, axis2=-1)
    sds = jnp.sqrt(jnp.sum(tril**2, axis=-1))
    rows, cols = jnp.tril_indices(dim, k=-1)
    shape = (tril / diagonal[..., :, None])[:, rows, cols]
    log_weights = jnp.where(mask, jnp.maximum(prior.log_weights, _MIN_LOG_WEIGHT), 0.0)
    features = jnp.concatenate([log_weights[:, None], prior.means, jnp.log(sds), shape], -1)
    return jnp.where(mask[:, None], features, 0.0)


class DataEmbedding(eqx.Module):
    """``W u + (A u) * (B u) + MLP(u)`` for one data point."""

    linear: eqx.nn.Linear
    left: eqx.nn.Linear
    right: eqx.nn.Linear
    mlp: eqx.nn.MLP

    def __init__(self, data_dim: int, width: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 4)
        self.linear = _linear(keys[0], data_dim, width)
        self.left = _linear(keys[1], data_dim, width)
        self.right = _linear(keys[2], data_dim, width)
        self.mlp = eqx.nn.MLP(data_dim, width, width, 1, activation=jax.nn.gelu, key=keys[3])

    def __call__(self, u: Float[Array, " p"]) -> Float[Array, " width"]:
        return self.linear(u) + self.left(u) * self.right(u) + self.mlp(u)


class Block(eqx.Module):
    """Self-attention over components, cross-attention to the data, MLP (pre-norm)."""

    self_norm: eqx.nn.LayerNorm
    self_attention: eqx.nn.MultiheadAttention
    cross_norm: eqx.nn.LayerNorm
    data_norm: eqx.nn.LayerNorm
    cross_attention: eqx.nn.MultiheadAttention
    mlp_norm: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, width: int, num_heads: int, mlp_width: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 3)
        self.self_norm = eqx.nn.LayerNorm(width)
        self.self_attention = eqx.nn.MultiheadAttention(num_heads, width, key=keys[0])
        self.cross_norm = eqx.nn.LayerNorm(width)
        self.data_norm = eqx.nn.LayerNorm(width)
        self.cross_attention = eqx.nn.MultiheadAttention(num_heads, width, key=keys[1])
        self.mlp_norm = eqx.nn.LayerNorm(width)
        self.mlp = eqx.nn.MLP(width, width, mlp_width, 1, activation=jax.nn.gelu, key=keys[2])

    def __call__(self, tokens, data_tokens, component_mask, data_mask, has_data):
        num_components, num_points = tokens.shape[0], data_tokens.shape[0]
        normed = jax.vmap(self.self_norm)(tokens)
        self_mask = jnp.broadcast_to(component_mask[None, :], (num_components,) * 2)
        tokens = tokens + self.self_attention(normed, normed, normed, mask=self_mask)
        query = jax.vmap(self.cross_norm)(tokens)
        keys = jax.vmap(self.data_norm)(data_tokens)
        cross_mask = jnp.broadcast_to(data_mask[None, :], (num_components, num_points))
        tokens = tokens + has_data * self.cross_attention(query, keys, keys, mask=cross_mask)
        return tokens + jax.vmap(self.mlp)(jax.vmap(self.mlp_norm)(tokens))


def _moment_features(u: Float[Array, "M p"]) -> Float[Array, "M F"]:
    """``(u, upper triangle of u u^T)`` of every point: the first and second moments that
    the sufficient statistics of a Gaussian likelihood are sums of."""
    rows, cols = jnp.triu_indices(u.shape[-1])
    return jnp.concatenate([u, u[:, rows] * u[:, cols]], axis=-1)


class SiteHead(eqx.Module):
    """Per-(component, point) Gaussian sites multiplied into the prior components.

    A site's precision factor and shift are an affine function of the point's moment
    features (exact for linear-Gaussian likelihoods) plus a learned correction from the
    point's embedding modulated by the component's token; the correction and the
    log-weight change start at zero, so the untrained head is a component-independent
    Gaussian likelihood approximation.
    """

    moment_precision: eqx.nn.Linear
    moment_shift: eqx.nn.Linear
    gate: eqx.nn.Linear
    offset: eqx.nn.Linear
    precision_factor: eqx.nn.Linear
    shift: eqx.nn.Linear
    log_scale: eqx.nn.Linear
    dim: int = eqx.field(static=True)

    def __init__(self, width: int, dim: int, data_dim: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 7)
        num_moments = data_dim + data_dim * (data_dim + 1) // 2
        self.moment_precision = _linear(keys[0], num_moments, dim * dim)
        self.moment_shift = _linear(keys[1], num_moments, dim)
        self.gate = _linear(keys[2], width, width, _HEAD_INIT_SCALE)
        self.offset = _linear(keys[3], width, width, _HEAD_INIT_SCALE)
        self.precision_factor = _linear(keys[4], width, dim * dim, 0.0)
        self.shift = _linear(keys[5], width, dim, 0.0)
        self.log_scale = _linear(keys[6], width, 1, 0.0)
        self.dim = dim

    def __call__(self, tokens, data_tokens, u, data_mask, has_data, prior):
        dim = self.dim
        moments = _moment_features(u)
        pair = (data_tokens[None, :, :] * (1.0 + jax.vmap(self.gate)(tokens))[:, None, :]
                + jax.vmap(self.offset)(tokens)[:, None, :])
        factors = (jax.vmap(self.moment_precision)(moments)[None]
                   + jax.vmap(jax.vmap(self.precision_factor))(pair))
        factors = factors.reshape(factors.shape[:2] + (dim, dim))
        shifts = (jax.vmap(self.moment_shift)(moments)[None]
                  + jax.vmap(jax.vmap(self.shift))(pair))
        weights = data_mask.astype(jnp.float32)
        precision = jnp.einsum("m,kmir,kmjr->kij", weights, factors, factors)
        shift = jnp.einsum("m,kmi->ki", weights, shifts)
        log_scale = has_data * jax.vmap(self.log_scale)(tokens)[:, 0]
        return multiply_gaussian_site(prior, precision, shift, log_scale).posterior


class DirectHead(eqx.Module):
    """Per component: logit change, mean shift and Cholesky multiplier (paper's head)."""

    output: eqx.nn.Linear
    dim: int = eqx.field(static=True)

    def __init__(self, width: int, dim: int, data_dim: int, *, key: PRNGKeyArray):
        self.output = _linear(key, width, 1 + dim + dim * (dim + 1) // 2, _HEAD_INIT_SCALE)
        self.dim = dim

    def __call__(self, tokens, data_tokens, u, data_mask, has_data, prior):
        dim = self.dim
        out = has_data * jax.vmap(self.output)(tokens)
        logit, shift, entries = out[:, 0], out[:, 1:1 + dim], out[:, 1 + dim:]
        rows, cols = jnp.tril_indices(dim)
        multiplier = jnp.zeros((out.shape[0], dim, dim)).at[:, rows, cols].set(entries)
        diagonal = jnp.diagonal(multiplier, axis1=-2, axis2=-1)
        multiplier = multiplier + jax.vmap(jnp.diag)(jnp.exp(diagonal) - diagonal)
        mask = prior.component_mask
        eye = jnp.eye(dim)
        tril = jnp.where(mask[:, None, None], prior.scale_tril, eye)
        means = prior.means + jnp.einsum("kij,kj->ki", tril, shift)
        log_weights = jnp.where(mask, prior.log_weights + logit, -jnp.inf)
        log_weights = log_weights - jax.nn.logsumexp(log_weights)
        return GaussianMixture(log_weights, jnp.where(mask[:, None], means, prior.means),
                               scale_tril=jnp.where(mask[:, None, None], tril @ multiplier,
                                                    prior.scale_tril),
                               validate=False)


class DistributionTransformer(eqx.Module):
    """Maps (mixture prior, masked data set) to a mixture posterior; see the module doc.

    Attributes:
        config: the :class:`TransformerConfig` (static).
    """

    config: TransformerConfig = eqx.field(static=True)
    component_embedding: eqx.nn.MLP
    count_embedding: eqx.nn.Linear
    data_embedding: DataEmbedding
    blocks: tuple[Block, ...]
    final_norm: eqx.nn.LayerNorm
    head: SiteHead | DirectHead

    def __init__(self, config: TransformerConfig, *, key: PRNGKeyArray):
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"Expected a TransformerConfig, got {type(config).__name__}.")
        keys = jax.random.split(key, 4 + config.depth)
        dim, width = config.dim, config.width
        num_features = 1 + 2 * dim + _num_shape_entries(dim)
        self.config = config
        self.component_embedding = eqx.nn.MLP(num_features, width, width, 1,
                                              activation=jax.nn.gelu, key=keys[0])
        self.count_embedding = _linear(keys[1], 2, width)
        self.data_embedding = DataEmbedding(config.data_dim, width, key=keys[2])
        self.blocks = tuple(Block(width, config.num_heads, config.mlp_width, key=k)
                            for k in keys[4:])
        self.final_norm = eqx.nn.LayerNorm(width)
        head_class = SiteHead if config.head == "site" else DirectHead
        self.head = head_class(width, dim, config.data_dim, key=keys[3])

    def __call__(
        self,
        prior: GaussianMixture,
        data: Float[Array, "M p"],
        mask: Bool[Array, " M"],
    ) -> GaussianMixture:
        """The posterior mixture for one prior and one data set (vmap for batches).

        Args:
            prior: unbatched mixture over ``theta`` (``d = config.dim``), any ``K``.
            data: ``(M, data_dim)`` points; rows where ``mask`` is False are ignored (they
                may hold anything, NaN included).
            mask: which rows are observed.

        Returns:
            The posterior, with as many component slots as the prior.
        """
        config = self.config
        mask = jnp.asarray(mask).astype(bool)
        data_loc = jnp.asarray(config.data_loc, jnp.float32)
        data_scale = jnp.asarray(config.data_scale, jnp.float32)
        data = jnp.where(mask[:, None], jnp.asarray(data, jnp.float32), data_loc)
        u = (data - data_loc) / data_scale
        count = jnp.sum(mask.astype(jnp.float32))
        has_data = (count > 0).astype(jnp.float32)
        prior_std = standardize_mixture(prior, config.theta_loc, config.theta_scale)
        count_features = jnp.stack([count / config.max_points,
                                    jnp.log1p(count) / math.log1p(config.max_points)])
        tokens = (jax.vmap(self.component_embedding)(_component_features(prior_std))
                  + self.count_embedding(count_features))
        data_tokens = jax.vmap(self.data_embedding)(u)
        component_mask = prior_std.component_mask
        for block in self.blocks:
            tokens = block(tokens, data_tokens, component_mask, mask, has_data)
        tokens = jax.vmap(self.final_norm)(tokens)
        posterior_std = self.head(tokens, data_tokens, u, mask, has_data, prior_std)
        posterior = unstandardize_mixture(posterior_std, config.theta_loc, config.theta_scale)
        # No data: the prior itself, exactly (the heads give it up to rounding).
        return jax.tree.map(lambda post, pri: jnp.where(count > 0, post, pri), posterior, prior)


def num_parameters(model: eqx.Module) -> int:
    """Number of trainable numbers (inexact array leaves)."""
    return sum(leaf.size for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
