"""The explanation model ``q(w | y, P)``: the most likely digits behind a given sum.

Maths (van Krieken et al. 2023). The symbols are factorised one input at a time, the digits of
``A`` and then those of ``B``, most significant first,

    q(w | y, P) = prod_j q_j(w_j | w_{<j}, y, P),

one MLP head per input on ``[P, onehot(y), onehot(w_{<j})]``. It is trained on the prior, like
the inference model: ``P_j ~ Dirichlet(alpha)``, ``w ~ P``, ``y = c(w)``,

    L_e = E_P E_{w ~ P} [-log q(w | c(w), P)],

minimised by the exact posterior ``p(w | y, P) = prod_j P_j(w_j) [c(w) = y] / p(y | P)``.
Optionally it also trains on a perception network's beliefs of training images.

Symbolic pruning, exact for addition. ``B = S - A`` must lie in ``[0, 10^N - 1]``, so ``A``
lies in ``[lo, hi] = [max(0, S - 10^N + 1), min(S, 10^N - 1)]`` (from the sum's digits:
``hi = y_1..y_N`` and ``lo = 0`` when the carry ``y_0`` is 0, ``hi = 9..9`` and ``lo = y_1..y_N
+ 1`` when it is 1). A digit of ``A`` is allowed when some number with the prefix so extended
lies in ``[lo, hi]`` (an interval, so comparing its smallest and largest completions with
``lo`` and ``hi`` is exact); then every digit of ``B`` is forced: ``B = S - A``, digit by digit
with borrows. So every decoded explanation satisfies ``c(w) = y``, computed on digits only (no
integer overflow for any ``N``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from .data import load_split, sample_examples
from .perception import PerceptionNetwork, beliefs
from .programs import AbstractProgram, Addition

__all__ = ["ExplanationModel", "explanation_masks", "explanation_log_prob", "explain",
           "train_explanation"]


def _check_addition(program: AbstractProgram) -> Addition:
    if not isinstance(program, Addition):
        raise ValueError(f"the explanation model's pruning is implemented for addition only, "
                         f"got {program.describe()}")
    return program


def _lex_less_equal(x, y):
    """``x <= y`` for digit arrays of equal length along the last axis (most significant
    first)."""
    differ = x != y
    first = jnp.argmax(differ, axis=-1)
    x_first = jnp.take_along_axis(x, first[..., None], -1)[..., 0]
    y_first = jnp.take_along_axis(y, first[..., None], -1)[..., 0]
    return ~jnp.any(differ, axis=-1) | (x_first < y_first)


def _bounds(outputs, n: int):
    """The digits of ``lo`` and ``hi`` (see the module docstring), each ``(..., N)``."""
    carry_out = outputs[..., 0:1] == 1
    low_part = outputs[..., 1:]
    # low_part + 1, digit by digit (it is at most 10^N - 2 when the carry is 1).
    plus_one, carry = [], jnp.ones(outputs.shape[:-1], outputs.dtype)
    for i in reversed(range(n)):
        column = low_part[..., i] + carry
        plus_one.append(column % 10)
        carry = column // 10
    plus_one = jnp.stack(plus_one[::-1], axis=-1)
    lo = jnp.where(carry_out, plus_one, 0)
    hi = jnp.where(carry_out, 9, low_part)
    return lo, hi


def _subtract(outputs, a, n: int):
    """The digits of ``B = S - A`` (``N`` digits; ``A`` is in range so no borrow is left)."""
    digits, borrow = [], jnp.zeros(a.shape[:-1], a.dtype)
    for i in reversed(range(n)):
        column = outputs[..., i + 1] - a[..., i] - borrow
        digits.append(column % 10)
        borrow = (column < 0).astype(a.dtype)
    return jnp.stack(digits[::-1], axis=-1)


def explanation_masks(program: Addition, outputs: Int[Array, "*batch outputs"],
                      prefix: Int[Array, "*batch inputs"], position: int
                      ) -> Int[Array, "*batch 10"]:
    """Which digits ``w_position`` keep ``c(w) = y`` reachable after ``prefix[..., :position]``."""
    n = _check_addition(program).num_digits
    digits = jnp.arange(10)
    if position >= n:  # a digit of B: forced by B = S - A
        b = _subtract(outputs, prefix[..., :n], n)
        return digits == b[..., position - n, None]
    lo, hi = _bounds(outputs, n)
    batch = prefix.shape[:-1]
    head = jnp.broadcast_to(prefix[..., None, :position], (*batch, 10, position))
    middle = jnp.broadcast_to(digits[:, None], (*batch, 10, 1))
    tail = jnp.ones((*batch, 10, n - position - 1), prefix.dtype)
    smallest = jnp.concatenate([head, middle, 0 * tail], axis=-1)
    largest = jnp.concatenate([head, middle, 9 * tail], axis=-1)
    return (_lex_less_equal(smallest, hi[..., None, :])
            & _lex_less_equal(lo[..., None, :], largest))


class ExplanationModel(eqx.Module):
    """One MLP head per input symbol, parameters stacked along a leading axis."""

    heads: eqx.nn.MLP
    num_digits: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(self, key, *, program: AbstractProgram, width: int = 128, depth: int = 2):
        program = _check_addition(program)
        self.num_digits, self.width, self.depth = program.num_digits, int(width), int(depth)
        k, m = program.num_inputs, program.num_outputs
        in_size = k * 10 + m * 10 + k * 10

        def make_head(head_key):
            return eqx.nn.MLP(in_size, 10, width, depth, activation=jax.nn.relu, key=head_key)

        self.heads = eqx.filter_vmap(make_head)(jax.random.split(key, k))

    def _features(self, p, outputs, symbols):
        k = symbols.shape[-1]
        previous = jax.nn.one_hot(symbols, 10)
        visible = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]
        previous = (visible[:, :, None] * previous[None]).reshape(k, k * 10)
        context = jnp.concatenate([p.reshape(-1), jax.nn.one_hot(outputs, 10).reshape(-1)])
        return jnp.concatenate([jnp.broadcast_to(context, (k, context.size)), previous], -1)

    def logits(self, p, outputs, symbols):
        """Unmasked logits of every input under teacher forcing (one example)."""
        features = self._features(p, outputs, symbols)
        return eqx.filter_vmap(lambda head, x: head(x))(self.heads, features)


def _check(model: ExplanationModel, program: AbstractProgram) -> Addition:
    program = _check_addition(program)
    if program.num_digits != model.num_digits:
        raise ValueError(f"program {program.describe()} does not match the explanation model "
                         f"built for addition(num_digits={model.num_digits})")
    return program


def explanation_log_prob(model: ExplanationModel, program: AbstractProgram,
                         p: Float[Array, "batch inputs 10"], outputs, symbols
                         ) -> Float[Array, " batch"]:
    """``log q(w | y, P)``; ``-inf`` when ``c(w) != y``."""
    program = _check(model, program)
    logits = jax.vmap(model.logits)(p, outputs, symbols)
    masks = jnp.stack([explanation_masks(program, outputs, symbols, j)
                       for j in range(program.num_inputs)], axis=-2)
    log_probs = jax.nn.log_softmax(jnp.where(masks, logits, -jnp.inf), axis=-1)
    picked = jnp.take_along_axis(log_probs, symbols[..., None], axis=-1)[..., 0]
    return jnp.sum(picked, axis=-1)


def explain(model: ExplanationModel, program: AbstractProgram, p: Float[Array, "batch inputs 10"],
            outputs: Int[Array, "batch outputs"]) -> tuple[Array, Array]:
    """Greedy most likely explanation ``w`` of each output (``c(w) = y`` guaranteed) and
    ``log q(w | y, P)``."""
    program = _check(model, program)
    k = program.num_inputs

    def one(p_one, y):
        symbols = jnp.zeros(k, y.dtype)
        total = jnp.zeros(())
        for j in range(k):
            # Every head sees only symbols[:j]; calling one head keeps decoding linear in K.
            head = jax.tree.map(lambda x, j=j: x[j] if eqx.is_array(x) else x, model.heads)
            logits = head(model._features(p_one, y, symbols)[j])
            mask = explanation_masks(program, y, symbols, j)
            log_probs = jax.nn.log_softmax(jnp.where(mask, logits, -jnp.inf))
            digit = jnp.argmax(log_probs)
            symbols = symbols.at[j].set(digit)
            total = total + log_probs[digit]
        return symbols, total

    return jax.vmap(one)(p, outputs)


def train_explanation(key, program: AbstractProgram, *, steps: int = 2000,
                      batch_size: int = 128, learning_rate: float = 1e-3,
                      dirichlet_alpha: float = 0.1, perception: PerceptionNetwork | None = None,
                      width: int = 128, depth: int = 2) -> ExplanationModel:
    """Train ``q(w | y, P)`` by ``L_e`` on prior beliefs (and, if ``perception`` is given, on
    its beliefs of task examples from the training split)."""
    program = _check_addition(program)
    init_key, step_key = jax.random.split(key)
    model = ExplanationModel(init_key, program=program, width=width, depth=depth)
    params, static = eqx.partition(model, eqx.is_array)
    optimizer = optax.adam(learning_rate)
    split = load_split("train")
    shape = (batch_size, program.num_inputs)

    def sampled_loss(m, k, p):
        symbols = jax.random.categorical(k, jnp.log(p))
        return -jnp.mean(explanation_log_prob(m, program, p, program(symbols), symbols))

    def loss_fn(params, index):
        m = eqx.combine(params, static)
        k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(step_key, index), 4)
        p = jax.random.dirichlet(k1, jnp.full(10, dirichlet_alpha), shape)
        loss = sampled_loss(m, k2, p)
        if perception is not None:
            examples = sample_examples(k3, split, program, batch_size)
            loss = loss + sampled_loss(m, k4, beliefs(perception, examples.images))
        return loss

    @jax.jit
    def run(params, opt_state):
        def step(carry, index):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, index)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))

    (params, _), losses = run(params, optimizer.init(params))
    if not bool(jnp.all(jnp.isfinite(losses))):
        raise FloatingPointError("explanation training produced a non-finite loss")
    return eqx.combine(params, static)
