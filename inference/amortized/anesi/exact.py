"""The exact baseline: the weighted model count by enumerating every assignment of the symbols.

Maths. For beliefs ``P_1, ..., P_K`` over ``K`` independent symbols and a program ``c``,

    p(y | P) = sum_{w in {0..9}^K} prod_j P_j(w_j) [c(w) = y],

computed here in log space over all ``10^K`` assignments at once (``10^(2N)`` for addition of
two ``N``-digit numbers, so only ``N = 1, 2``: :data:`MAX_ASSIGNMENTS`), or streamed in chunks
(:func:`exact_log_prob_streamed`: constant memory, the same ``10^K`` time, which is what makes
``N = 3, 4`` measurable and ``N = 5`` not). Training the perception
network by ``-log p(y_true | f(x))`` is the exact-likelihood counterpart of A-NeSI's
``-log q(y_true | f(x))`` and the reference it is measured against for small ``N``.
"""

from __future__ import annotations

import itertools
import time
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from .data import load_split, sample_examples
from .perception import PerceptionNetwork, log_beliefs
from .programs import AbstractProgram, digits_to_int

__all__ = ["MAX_ASSIGNMENTS", "MAX_STREAMED_ASSIGNMENTS", "AssignmentTable", "assignment_table",
           "exact_log_prob", "exact_log_prob_streamed", "exact_output_distribution",
           "ExactResult", "train_exact"]

MAX_ASSIGNMENTS = 10_000
MAX_STREAMED_ASSIGNMENTS = 10 ** 8  # addition N <= 4; int32 assignment indices


class AssignmentTable(NamedTuple):
    """Every assignment ``w`` ``(A, K)``, its output digits ``(A, M)``, and the index of its
    output among the distinct outputs ``values`` (as integers, ascending)."""

    assignments: np.ndarray
    outputs: np.ndarray
    output_index: np.ndarray
    values: np.ndarray


def assignment_table(program: AbstractProgram) -> AssignmentTable:
    """Enumerate ``input_arity ** num_inputs`` assignments; refuses more than
    :data:`MAX_ASSIGNMENTS`."""
    count = program.input_arity ** program.num_inputs
    if count > MAX_ASSIGNMENTS:
        raise ValueError(
            f"exact enumeration of {program.describe()} needs {program.input_arity}^"
            f"{program.num_inputs} = {count} assignments, more than MAX_ASSIGNMENTS = "
            f"{MAX_ASSIGNMENTS} (for addition: num_digits <= 2); use the A-NeSI inference model")
    assignments = np.array(list(itertools.product(range(program.input_arity),
                                                  repeat=program.num_inputs)), np.int32)
    outputs = np.asarray(program(jnp.asarray(assignments)))
    as_int = np.array([digits_to_int(row) for row in outputs])
    values, output_index = np.unique(as_int, return_inverse=True)
    return AssignmentTable(assignments, outputs, output_index.astype(np.int32), values)


def _assignment_log_probs(table: AssignmentTable, log_beliefs) -> Float[Array, "batch A"]:
    """``sum_j log P_j(w_j)`` for every assignment ``w``."""
    columns = jnp.arange(table.assignments.shape[1])
    return jnp.sum(log_beliefs[:, columns, table.assignments], axis=-1)


def exact_log_prob(program: AbstractProgram, log_beliefs: Float[Array, "batch inputs 10"],
                   outputs: Int[Array, "batch outputs"],
                   table: AssignmentTable | None = None) -> Float[Array, " batch"]:
    """``log p(y | P)`` by enumeration (``-inf`` for an output no assignment produces)."""
    table = assignment_table(program) if table is None else table
    if log_beliefs.shape[1:] != (program.num_inputs, program.input_arity):
        raise ValueError(f"log_beliefs: expected shape (batch, {program.num_inputs}, "
                         f"{program.input_arity}), got {tuple(log_beliefs.shape)}")
    match = jnp.all(jnp.asarray(table.outputs)[None] == outputs[:, None], axis=-1)
    scores = _assignment_log_probs(table, log_beliefs)
    return jax.nn.logsumexp(jnp.where(match, scores, -jnp.inf), axis=-1)


def exact_log_prob_streamed(program: AbstractProgram, log_beliefs: Float[Array, "batch inputs 10"],
                            outputs: Int[Array, "batch outputs"], *,
                            chunk_size: int = 2 ** 16) -> Float[Array, " batch"]:
    """``log p(y | P)`` by enumeration, ``chunk_size`` assignments at a time.

    Equal to :func:`exact_log_prob` without its table: assignment ``i`` is read off the
    digits of ``i`` in base ``input_arity``, inside a ``lax.map`` over chunks whose body is
    rematerialised in the backward pass, so memory stays ``O(batch * chunk_size)`` for any
    ``K`` while time stays ``O(batch * arity^K)``. Refuses more than
    :data:`MAX_STREAMED_ASSIGNMENTS`.
    """
    arity, k = program.input_arity, program.num_inputs
    count = arity ** k
    if count > MAX_STREAMED_ASSIGNMENTS:
        raise ValueError(f"streamed enumeration of {program.describe()} needs {arity}^{k} = "
                         f"{count} assignments, more than MAX_STREAMED_ASSIGNMENTS = "
                         f"{MAX_STREAMED_ASSIGNMENTS}")
    if log_beliefs.shape[1:] != (k, arity):
        raise ValueError(f"log_beliefs: expected shape (batch, {k}, {arity}), got "
                         f"{tuple(log_beliefs.shape)}")
    chunk_size = min(int(chunk_size), count)
    num_chunks = -(-count // chunk_size)
    place = jnp.asarray([arity ** (k - 1 - j) for j in range(k)], jnp.int32)
    columns = jnp.arange(k)

    @jax.checkpoint
    def chunk(start):
        index = start + jnp.arange(chunk_size, dtype=jnp.int32)
        symbols = (index[:, None] // place) % arity
        match = jnp.all(program(symbols)[None] == outputs[:, None], axis=-1)
        match = match & (index < count)[None]
        scores = jnp.sum(log_beliefs[:, columns, symbols], axis=-1)
        return jax.nn.logsumexp(jnp.where(match, scores, -jnp.inf), axis=-1)

    starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk_size
    return jax.nn.logsumexp(jax.lax.map(chunk, starts), axis=0)


def exact_output_distribution(program: AbstractProgram, log_beliefs,
                              table: AssignmentTable | None = None
                              ) -> tuple[np.ndarray, Float[Array, "batch values"]]:
    """The exact distribution over the program's outputs: ``(values, probabilities)``, the
    outputs as integers (ascending) and ``p(value | P)`` for each example."""
    table = assignment_table(program) if table is None else table
    scores = _assignment_log_probs(table, log_beliefs)
    probabilities = jax.ops.segment_sum(jnp.exp(scores).T, jnp.asarray(table.output_index),
                                        num_segments=len(table.values)).T
    return table.values, probabilities


class ExactResult(NamedTuple):
    """The perception network trained by the exact likelihood, and its loss per step."""

    perception: PerceptionNetwork
    losses: np.ndarray
    wall_time: float


def train_exact(key, program: AbstractProgram, *, steps: int = 1000, batch_size: int = 32,
                learning_rate: float = 1e-3, width: int = 128, depth: int = 2) -> ExactResult:
    """Train the perception network by ``-log p(y_true | f(x))`` (the exact likelihood).

    Same data, network and optimiser as :func:`~.train.train`'s joint phase, with the
    inference model replaced by enumeration.
    """
    table = assignment_table(program)
    split = load_split("train")
    init_key, data_key = jax.random.split(key)
    perception = PerceptionNetwork(init_key, width=width, depth=depth)
    optimizer = optax.adam(learning_rate)
    opt_state = optimizer.init(eqx.filter(perception, eqx.is_array))

    def loss_fn(model, examples):
        log_p = log_beliefs(model, examples.images)
        return -jnp.mean(exact_log_prob(program, log_p, examples.outputs, table))

    params, static = eqx.partition(perception, eqx.is_array)

    @jax.jit
    def run(params, opt_state):
        def step(carry, index):
            params, opt_state = carry
            examples = sample_examples(jax.random.fold_in(data_key, index), split, program,
                                       batch_size)
            loss, grads = jax.value_and_grad(
                lambda p: loss_fn(eqx.combine(p, static), examples))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))

    start = time.perf_counter()
    (params, _), losses = run(params, opt_state)
    losses = np.asarray(losses)
    return ExactResult(eqx.combine(params, static), losses, time.perf_counter() - start)
