"""The inference model ``q(y | P)``: an autoregressive approximation of the weighted model count.

Maths (van Krieken, Thanapalasingam, Tomczak, van Harmelen and ten Teije, "A-NeSI: A Scalable
Approximate Method for Probabilistic Neurosymbolic Inference", NeurIPS 2023). The output
``y = (y_0, ..., y_{M-1})`` of a program is factorised digit by digit in the program's
``decode_order`` (for addition least significant first, see :mod:`.programs`),

    q(y | P) = prod_i q_i(y_i | y_{<i}, P)   ("<i": decoded before i),

so evaluating or decoding an output costs ``M`` network calls (linear in the number of output
digits, for addition ``N + 1``), against the ``10^(2N)`` terms of the exact count. Each factor
is a softmax over the logits of a small MLP per output position, ``h_i([P, onehot(y_{<i})])``
(the later digits are zeroed out of its input). Symbolic pruning masks the logits: digits that
the program cannot produce after ``y_{<i}`` (:meth:`AbstractProgram.prune`) get logit
``-inf``, so ``q`` gives probability exactly 0 to every impossible output and, being a product
of normalised factors over the pruned tree, still sums to 1 over the possible ones.

All public functions take a batch: ``beliefs`` shaped ``(batch, num_inputs, 10)`` and outputs
``(batch, num_outputs)``; the program is a static argument.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .programs import AbstractProgram, output_masks

__all__ = ["InferenceModel", "check_program", "masked_log_probs", "log_prob", "sample",
           "greedy", "beam_search"]

NUM_VALUES = 10


class InferenceModel(eqx.Module):
    """One MLP head per output position, parameters stacked along a leading axis.

    Args:
        key: initialisation key.
        program: the program whose output space this model covers (it records the program's
            ``num_inputs``, ``input_arity`` and ``output_sizes`` and refuses another's).
        width, depth: each head's hidden width and number of hidden layers.
    """

    heads: eqx.nn.MLP
    program_name: str = eqx.field(static=True)
    num_inputs: int = eqx.field(static=True)
    input_arity: int = eqx.field(static=True)
    output_sizes: tuple[int, ...] = eqx.field(static=True)
    decode_order: tuple[int, ...] = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(self, key, *, program: AbstractProgram, width: int = 128, depth: int = 2):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        if max(program.output_sizes) > NUM_VALUES:
            raise ValueError(f"program {program.describe()}: output digits take at most "
                             f"{NUM_VALUES} values, got output_sizes {program.output_sizes}")
        self.program_name = program.describe()
        self.num_inputs = program.num_inputs
        self.input_arity = program.input_arity
        self.output_sizes = tuple(program.output_sizes)
        self.decode_order = tuple(program.decode_order)
        self.width, self.depth = int(width), int(depth)
        in_size = self.num_inputs * self.input_arity + self.num_outputs * NUM_VALUES

        def make_head(head_key):
            return eqx.nn.MLP(in_size, NUM_VALUES, width, depth, activation=jax.nn.relu,
                              key=head_key)

        self.heads = eqx.filter_vmap(make_head)(jax.random.split(key, self.num_outputs))

    @property
    def num_outputs(self) -> int:
        return len(self.output_sizes)

    def architecture(self) -> dict:
        return {"width": self.width, "depth": self.depth}

    def _features(self, beliefs: Float[Array, "inputs arity"],
                  outputs: Int[Array, " outputs"]) -> Float[Array, "outputs features"]:
        """Row ``i``: the beliefs and the one-hot digits decoded before position ``i`` (the
        others zeroed)."""
        m = self.num_outputs
        previous = jax.nn.one_hot(outputs, NUM_VALUES)
        rank = jnp.argsort(jnp.asarray(self.decode_order))  # rank[i]: when i is decoded
        visible = rank[None, :] < rank[:, None]
        previous = (visible[:, :, None] * previous[None]).reshape(m, m * NUM_VALUES)
        flat = jnp.broadcast_to(beliefs.reshape(-1), (m, beliefs.size))
        return jnp.concatenate([flat, previous], axis=-1)

    def logits(self, beliefs, outputs) -> Float[Array, "outputs 10"]:
        """Unmasked logits of every position under teacher forcing (one example)."""
        features = self._features(beliefs, outputs)
        return eqx.filter_vmap(lambda head, x: head(x))(self.heads, features)

    def position_logits(self, beliefs, outputs, position: int) -> Float[Array, " 10"]:
        """Unmasked logits of one (static) position, calling only that head."""
        head = jax.tree.map(lambda x: x[position] if eqx.is_array(x) else x, self.heads)
        return head(self._features(beliefs, outputs)[position])


def check_program(model: InferenceModel, program: AbstractProgram) -> None:
    """Refuse a program whose input or output space differs from the model's."""
    mine = (model.num_inputs, model.input_arity, tuple(model.output_sizes), model.decode_order)
    theirs = (program.num_inputs, program.input_arity, tuple(program.output_sizes),
              tuple(program.decode_order))
    if mine != theirs:
        raise ValueError(
            f"program {program.describe()} does not match the inference model built for "
            f"{model.program_name}: (num_inputs, input_arity, output_sizes, decode_order) = "
            f"{theirs}, expected {mine}")


def _check_beliefs(model: InferenceModel, beliefs) -> None:
    want = (model.num_inputs, model.input_arity)
    if beliefs.ndim != 3 or tuple(beliefs.shape[1:]) != want:
        raise ValueError(f"beliefs: expected shape (batch, {want[0]}, {want[1]}), "
                         f"got {tuple(beliefs.shape)}")


def _check_outputs(model: InferenceModel, beliefs, outputs) -> None:
    if outputs.shape != (beliefs.shape[0], model.num_outputs):
        raise ValueError(f"outputs: expected shape ({beliefs.shape[0]}, {model.num_outputs}), "
                         f"got {tuple(outputs.shape)}")


def _size_mask(model: InferenceModel) -> Array:
    return jnp.arange(NUM_VALUES)[None, :] < jnp.asarray(model.output_sizes)[:, None]


def masked_log_probs(model: InferenceModel, program: AbstractProgram, beliefs,
                     outputs) -> Float[Array, "batch outputs 10"]:
    """``log q_i(. | y_{<i}, P)`` of every position under teacher forcing, pruned digits at
    ``-inf``."""
    check_program(model, program)
    _check_beliefs(model, beliefs)
    _check_outputs(model, beliefs, outputs)
    logits = jax.vmap(model.logits)(beliefs, outputs)
    allowed = output_masks(program, outputs) & _size_mask(model)
    return jax.nn.log_softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)


def log_prob(model: InferenceModel, program: AbstractProgram, beliefs,
             outputs) -> Float[Array, " batch"]:
    """``log q(y | P)`` of given outputs; ``-inf`` for an output the program cannot produce."""
    log_probs = masked_log_probs(model, program, beliefs, outputs)
    picked = jnp.take_along_axis(log_probs, outputs[..., None], axis=-1)[..., 0]
    return jnp.sum(picked, axis=-1)


def _decode(model, program, beliefs, choose_fn, key):
    """Decoding of one example in ``decode_order``, ``choose_fn(key, log_probs) -> digit``."""
    outputs = jnp.zeros(model.num_outputs, jnp.int32)
    total = jnp.zeros(())
    size_mask = _size_mask(model)
    for i in model.decode_order:
        logits = model.position_logits(beliefs, outputs, i)
        allowed = program.prune(outputs, i) & size_mask[i]
        log_probs = jax.nn.log_softmax(jnp.where(allowed, logits, -jnp.inf))
        digit = choose_fn(jax.random.fold_in(key, i), log_probs)
        outputs = outputs.at[i].set(digit)
        total = total + log_probs[digit]
    return outputs, total


def sample(key, model: InferenceModel, program: AbstractProgram,
           beliefs) -> tuple[Int[Array, "batch outputs"], Float[Array, " batch"]]:
    """Ancestral samples ``y ~ q(. | P)`` and their log-probabilities."""
    check_program(model, program)
    _check_beliefs(model, beliefs)
    keys = jax.random.split(key, beliefs.shape[0])
    return jax.vmap(lambda k, p: _decode(model, program, p, jax.random.categorical, k))(
        keys, beliefs)


def greedy(model: InferenceModel, program: AbstractProgram,
           beliefs) -> tuple[Int[Array, "batch outputs"], Float[Array, " batch"]]:
    """Greedy decoding (the most likely digit at each position) and ``log q`` of the result."""
    check_program(model, program)
    _check_beliefs(model, beliefs)
    key = jax.random.key(0)  # unused by argmax
    return jax.vmap(lambda p: _decode(model, program, p, lambda _, lp: jnp.argmax(lp), key))(
        beliefs)


def beam_search(model: InferenceModel, program: AbstractProgram, beliefs, beam_width: int = 4
                ) -> tuple[Int[Array, "batch beam outputs"], Float[Array, "batch beam"]]:
    """The ``beam_width`` best outputs found by beam search, best first, with ``log q``.

    Beams beyond the number of possible outputs carry ``-inf``.
    """
    check_program(model, program)
    _check_beliefs(model, beliefs)
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    size_mask = _size_mask(model)
    m = model.num_outputs

    def one(p):
        outputs = jnp.zeros((beam_width, m), jnp.int32)
        scores = jnp.full(beam_width, -jnp.inf).at[0].set(0.0)
        for i in model.decode_order:
            logits = jax.vmap(functools.partial(model.position_logits, p, position=i))(outputs)
            allowed = program.prune(outputs, i) & size_mask[i]
            log_probs = jax.nn.log_softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
            candidates = (scores[:, None] + log_probs).reshape(-1)
            scores, index = jax.lax.top_k(candidates, beam_width)
            outputs = outputs[index // NUM_VALUES].at[:, i].set(index % NUM_VALUES)
        return outputs, scores

    return jax.vmap(one)(beliefs)
