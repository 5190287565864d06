"""The GPT-2 architecture in equinox.

Learned position embeddings, pre-LayerNorm blocks, fused q/k/v projection, GELU MLP and the
output head tied to the token embeddings, matching Hugging Face ``GPT2LMHeadModel``. Layer
weights are stacked on a leading axis; ``layers.run_layers`` runs them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from . import layers as L

ARCHITECTURE = "GPT2LMHeadModel"
_ACTIVATIONS = {"gelu_new": True, "gelu_pytorch_tanh": True, "gelu": False}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5
    tanh_gelu: bool = True

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> GPT2Config:
        activation = config.get("activation_function", "gelu_new")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Expected activation_function in {sorted(_ACTIVATIONS)}, got {activation!r}."
            )
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if config.get(flag, False):
                raise ValueError(f"Expected {flag} false in config.json, got true.")
        if not config.get("scale_attn_weights", True):
            raise ValueError("Expected scale_attn_weights true in config.json, got false.")
        return cls(
            vocab_size=config["vocab_size"],
            n_positions=config["n_positions"],
            n_embd=config["n_embd"],
            n_layer=config["n_layer"],
            n_head=config["n_head"],
            n_inner=config.get("n_inner") or 4 * config["n_embd"],
            layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
            tanh_gelu=_ACTIVATIONS[activation],
        )


_LAYER_NAMES = {
    "ln_1.weight": "ln_1_w",
    "ln_1.bias": "ln_1_b",
    "attn.c_attn.weight": "qkv_w",
    "attn.c_attn.bias": "qkv_b",
    "attn.c_proj.weight": "proj_w",
    "attn.c_proj.bias": "proj_b",
    "ln_2.weight": "ln_2_w",
    "ln_2.bias": "ln_2_b",
    "mlp.c_fc.weight": "fc_w",
    "mlp.c_fc.bias": "fc_b",
    "mlp.c_proj.weight": "out_w",
    "mlp.c_proj.bias": "out_b",
}


class GPT2(eqx.Module):
    """A GPT-2 causal language model.

    Attributes:
        config: the architecture's hyperparameters.
        wte: ``(vocab, hidden)`` token embeddings, also the output head.
        wpe: ``(n_positions, hidden)`` position embeddings.
        layers: dict of per-layer weights stacked on a leading ``layers`` axis, ``(in, out)``
            (Hugging Face's Conv1D layout).
        ln_f_w, ln_f_b: final LayerNorm.
    """

    config: GPT2Config = eqx.field(static=True)
    wte: Float[Array, "vocab hidden"]
    wpe: Float[Array, "positions hidden"]
    layers: dict[str, Array]
    ln_f_w: Float[Array, " hidden"]
    ln_f_b: Float[Array, " hidden"]

    @property
    def num_layers(self) -> int:
        return self.config.n_layer

    @property
    def num_kv_heads(self) -> int:
        return self.config.n_head

    @property
    def head_dim(self) -> int:
        return self.config.n_embd // self.config.n_head

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def dtype(self):
        return self.wte.dtype

    def hidden(
        self,
        token_ids: Int[Array, "batch chunk"],
        positions: Int[Array, "batch chunk"],
        cache: L.KVCache | None,
        write_slots: Int[Array, "batch chunk"] | None,
    ) -> tuple[Float[Array, "batch chunk hidden"], L.KVCache | None]:
        """Final hidden states of ``token_ids`` (after ``ln_f``) and the updated cache.

        With ``cache=None`` the chunk attends only to itself (positions must be
        ``0 .. chunk-1``): the cache-free path for scoring and training.
        """
        c = self.config
        batch, chunk = token_ids.shape
        heads, head_dim = c.n_head, self.head_dim
        # Positions past the table (padding rows only) are clipped rather than wrapped.
        x = self.wte[token_ids] + self.wpe[jnp.minimum(positions, c.n_positions - 1)]

        def layer(x, inputs):
            p, layer_cache = inputs
            h = L.layer_norm(x, p["ln_1_w"], p["ln_1_b"], c.layer_norm_epsilon)
            q, k, v = jnp.split(h @ p["qkv_w"] + p["qkv_b"], 3, axis=-1)
            q = q.reshape(batch, chunk, heads, head_dim)
            k = k.reshape(batch, chunk, heads, head_dim)
            v = v.reshape(batch, chunk, heads, head_dim)
            attn, layer_cache = L.self_attention(q, k, v, positions, layer_cache, write_slots)
            attn = attn.reshape(batch, chunk, -1)
            x = x + attn @ p["proj_w"] + p["proj_b"]
            h = L.layer_norm(x, p["ln_2_w"], p["ln_2_b"], c.layer_norm_epsilon)
            h = jax.nn.gelu(h @ p["fc_w"] + p["fc_b"], approximate=c.tanh_gelu)
            return x + h @ p["out_w"] + p["out_b"], layer_cache

        x, new_cache = L.run_layers(layer, x, self.layers, cache)
        return L.layer_norm(x, self.ln_f_w, self.ln_f_b, c.layer_norm_epsilon), new_cache

    def __call__(self, token_ids, positions, cache, write_slots):
        """Logits ``(batch, chunk, vocab)`` in float32 and the updated cache."""
        h, cache = self.hidden(token_ids, positions, cache, write_slots)
        return jnp.matmul(h, self.wte.T, preferred_element_type=jnp.float32), cache


def from_hf(config: dict[str, Any], tensors: dict[str, np.ndarray], *, dtype) -> GPT2:
    """Builds the model from a Hugging Face config dict and its named tensors."""
    c = GPT2Config.from_hf(config)
    # GPT2LMHeadModel prefixes "transformer."; a bare GPT2Model does not.
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}

    def get(name):
        if name not in tensors:
            raise ValueError(f"Expected tensor {name!r} in the checkpoint, got none by that name.")
        return np.asarray(tensors[name], np.float32)

    layers = {
        name: jnp.asarray(np.stack([get(f"h.{i}.{hf}") for i in range(c.n_layer)]), dtype)
        for hf, name in _LAYER_NAMES.items()
    }
    return GPT2(
        c,
        jnp.asarray(get("wte.weight"), dtype),
        jnp.asarray(get("wpe.weight"), dtype),
        layers,
        jnp.asarray(get("ln_f.weight"), dtype),
        jnp.asarray(get("ln_f.bias"), dtype),
    )
