"""The Qwen2 architecture (Llama family) in equinox.

RMSNorm, rotary position embeddings, grouped-query attention with q/k/v biases, a SwiGLU
MLP and optionally tied input/output embeddings, matching Hugging Face
``Qwen2ForCausalLM``. Layer weights are stacked on a leading axis; ``layers.run_layers``
runs them (under ``lax.scan`` without a cache).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from . import layers as L

ARCHITECTURE = "Qwen2ForCausalLM"


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 32768

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> Qwen2Config:
        if config.get("use_sliding_window", False):
            raise ValueError("Expected use_sliding_window false in config.json, got true.")
        rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"Expected default rotary embeddings, got rope_type {rope_type!r}.")
        theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        heads = config["num_attention_heads"]
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads", heads),
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            tie_word_embeddings=config.get("tie_word_embeddings", True),
            max_position_embeddings=config.get("max_position_embeddings", 32768),
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "architectures": [ARCHITECTURE],
            "model_type": "qwen2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "use_sliding_window": False,
            "torch_dtype": "float32",
        }


# Hugging Face name (inside "model.layers.{i}.") -> (our name, transpose to (in, out)).
_LAYER_NAMES = {
    "input_layernorm.weight": ("input_norm", False),
    "self_attn.q_proj.weight": ("q_w", True),
    "self_attn.q_proj.bias": ("q_b", False),
    "self_attn.k_proj.weight": ("k_w", True),
    "self_attn.k_proj.bias": ("k_b", False),
    "self_attn.v_proj.weight": ("v_w", True),
    "self_attn.v_proj.bias": ("v_b", False),
    "self_attn.o_proj.weight": ("o_w", True),
    "post_attention_layernorm.weight": ("post_norm", False),
    "mlp.gate_proj.weight": ("gate_w", True),
    "mlp.up_proj.weight": ("up_w", True),
    "mlp.down_proj.weight": ("down_w", True),
}


class Qwen2(eqx.Module):
    """A Qwen2 causal language model.

    Attributes:
        config: the architecture's hyperparameters.
        embed: ``(vocab, hidden)`` token embeddings (also the output head when tied).
        layers: dict of per-layer weights stacked on a leading ``layers`` axis, stored
            ``(in, out)``.
        norm: ``(hidden,)`` final RMSNorm weight.
        lm_head: ``(vocab, hidden)`` output head, or None when tied to ``embed``.
    """

    config: Qwen2Config = eqx.field(static=True)
    embed: Float[Array, "vocab hidden"]
    layers: dict[str, Array]
    norm: Float[Array, " hidden"]
    lm_head: Float[Array, "vocab hidden"] | None

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return self.config.num_key_value_heads

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def dtype(self):
        return self.embed.dtype

    def hidden(
        self,
        token_ids: Int[Array, "batch chunk"],
        positions: Int[Array, "batch chunk"],
        cache: L.KVCache | None,
        write_slots: Int[Array, "batch chunk"] | None,
        *,
        unroll: bool = False,
        read_at: Int[Array, " batch"] | None = None,
    ) -> tuple[Float[Array, "batch chunk hidden"], L.KVCache | None]:
        """Final hidden states of ``token_ids`` (after the last norm) and the updated cache.

        With ``cache=None`` the chunk attends only to itself (positions must be
        ``0 .. chunk-1``): the cache-free path for scoring and training. ``unroll`` unrolls
        that path's loop over layers (faster training steps for shallow models on CPU).
        ``read_at`` (with a cache): return only the hidden state of column ``read_at[b]`` of
        each row, ``(batch, 1, hidden)``. The last layer then still writes every column's
        keys and values to the cache but attends and runs its MLP for that column only (a
        reward read at a step's last token: about a fifth less work, measured at 4 layers).
        """
        c = self.config
        batch, chunk = token_ids.shape
        x = self.embed[token_ids]
        if read_at is not None and cache is None:
            raise ValueError("read_at needs a cache (the cache-free path reads every column).")

        def layer(x, inputs, read_at=None):
            p, layer_cache = inputs
            h = L.rms_norm(x, p["input_norm"], c.rms_norm_eps)
            k = (h @ p["k_w"] + p["k_b"]).reshape(batch, chunk, c.num_key_value_heads, c.head_dim)
            v = (h @ p["v_w"] + p["v_b"]).reshape(batch, chunk, c.num_key_value_heads, c.head_dim)
            k = L.rotary(k, positions, c.rope_theta)
            query_positions = positions
            if read_at is not None:  # the queries and the residual stream of one column
                take = lambda a: jnp.take_along_axis(  # noqa: E731
                    a, read_at.reshape((batch, 1) + (1,) * (a.ndim - 2)), axis=1)
                h, x, query_positions = take(h), take(x), take(positions)
            q = (h @ p["q_w"] + p["q_b"]).reshape(batch, -1, c.num_attention_heads, c.head_dim)
            q = L.rotary(q, query_positions, c.rope_theta)
            attn, layer_cache = L.self_attention(q, k, v, query_positions, layer_cache,
                                                 write_slots)
            attn = attn.reshape(batch, q.shape[1], -1)
            x = x + attn @ p["o_w"]
            h = L.rms_norm(x, p["post_norm"], c.rms_norm_eps)
            x = x + (jax.nn.silu(h @ p["gate_w"]) * (h @ p["up_w"])) @ p["down_w"]
            return x, layer_cache

        last = None if read_at is None else lambda x, inputs: layer(x, inputs, read_at)
        x, cache = L.run_layers(layer, x, self.layers, cache, unroll=unroll, last=last)
        return L.rms_norm(x, self.norm, c.rms_norm_eps), cache

    def __call__(self, token_ids, positions, cache, write_slots, *, unroll: bool = False):
        """Logits ``(batch, chunk, vocab)`` in float32 and the updated cache."""
        h, cache = self.hidden(token_ids, positions, cache, write_slots, unroll=unroll)
        head = self.embed if self.lm_head is None else self.lm_head
        return jnp.matmul(h, head.T, preferred_element_type=jnp.float32), cache


def init(key: PRNGKeyArray, config: Qwen2Config, *, dtype=jnp.float32) -> Qwen2:
    """Random initialisation (normal, std 0.02; norms at 1), as Hugging Face does."""
    c = config
    n, d, i = c.num_hidden_layers, c.hidden_size, c.intermediate_size
    q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    shapes = {
        "q_w": (n, d, q_dim),
        "k_w": (n, d, kv_dim),
        "v_w": (n, d, kv_dim),
        "o_w": (n, q_dim, d),
        "gate_w": (n, d, i),
        "up_w": (n, d, i),
        "down_w": (n, i, d),
    }
    keys = jax.random.split(key, len(shapes) + 2)
    layers = {
        name: 0.02 * jax.random.normal(k, shape, dtype)
        for k, (name, shape) in zip(keys, shapes.items(), strict=False)
    }
    layers.update(
        q_b=jnp.zeros((n, q_dim), dtype),
        k_b=jnp.zeros((n, kv_dim), dtype),
        v_b=jnp.zeros((n, kv_dim), dtype),
        input_norm=jnp.ones((n, d), dtype),
        post_norm=jnp.ones((n, d), dtype),
    )
    embed = 0.02 * jax.random.normal(keys[-2], (c.vocab_size, d), dtype)
    lm_head = (
        None
        if c.tie_word_embeddings
        else 0.02 * jax.random.normal(keys[-1], (c.vocab_size, d), dtype)
    )
    return Qwen2(c, embed, layers, jnp.ones((d,), dtype), lm_head)


def from_hf(config: dict[str, Any], tensors: dict[str, np.ndarray], *, dtype) -> Qwen2:
    """Builds the model from a Hugging Face config dict and its named tensors."""
    c = Qwen2Config.from_hf(config)
    get = _getter(tensors)
    layers = {}
    for hf_name, (name, transpose) in _LAYER_NAMES.items():
        stacked = []
        for index in range(c.num_hidden_layers):
            w = get(f"model.layers.{index}.{hf_name}")
            stacked.append(w.T if transpose else w)
        layers[name] = jnp.asarray(np.stack(stacked), dtype)
    embed = jnp.asarray(get("model.embed_tokens.weight"), dtype)
    lm_head = None if c.tie_word_embeddings else jnp.asarray(get("lm_head.weight"), dtype)
    return Qwen2(c, embed, layers, jnp.asarray(get("model.norm.weight"), dtype), lm_head)


def to_hf(model: Qwen2) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The inverse of ``from_hf``: a config dict and named float32 tensors."""
    c = model.config
    tensors = {
        "model.embed_tokens.weight": np.asarray(model.embed, np.float32),
        "model.norm.weight": np.asarray(model.norm, np.float32),
    }
    if model.lm_head is not None:
        tensors["lm_head.weight"] = np.asarray(model.lm_head, np.float32)
    for hf_name, (name, transpose) in _LAYER_NAMES.items():
        stacked = np.asarray(model.layers[name], np.float32)
        for index in range(c.num_hidden_layers):
            w = stacked[index]
            tensors[f"model.layers.{index}.{hf_name}"] = np.ascontiguousarray(
                w.T if transpose else w
            )
    return c.to_hf(), tensors


def _getter(tensors):
    def get(name):
        if name not in tensors:
            raise ValueError(f"Expected tensor {name!r} in the checkpoint, got none by that name.")
        return np.asarray(tensors[name], np.float32)

    return get
