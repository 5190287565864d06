"""Stan's windowed warm-up (step size by dual averaging, mass matrix by Welford windows).

Built from BlackJAX's dual-averaging and mass-matrix primitives, as an init/update/final
triple that the sampler drives *inside the same scan as sampling*: the NUTS kernel then
appears once in the compiled program, which roughly halves compilation time compared with
a separate warm-up loop.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import MassMatrixAdaptationState, mass_matrix_adaptation
from blackjax.adaptation.staged_adaptation import build_schedule
from blackjax.adaptation.step_size import (
    DualAveragingAdaptationState,
    dual_averaging_adaptation,
)

__all__ = ["WindowAdaptationState", "window_adaptation", "warmup_schedule"]


class WindowAdaptationState(NamedTuple):
    """State of the windowed warm-up.

    Attributes:
        step_size_state: dual-averaging state.
        mass_matrix_state: Welford covariance state and the current inverse mass matrix.
        step_size: the step size the kernel uses now.
        inverse_mass_matrix: the inverse mass matrix the kernel uses now.
    """

    step_size_state: DualAveragingAdaptationState
    mass_matrix_state: MassMatrixAdaptationState
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


def warmup_schedule(num_warmup: int) -> tuple[np.ndarray, np.ndarray]:
    """Stan's schedule: ``(is_slow_window, is_window_end)`` flags, one per warm-up step."""
    if num_warmup == 0:
        return np.zeros(0, np.int32), np.zeros(0, bool)
    schedule = np.asarray(build_schedule(num_warmup))
    return schedule[:, 0].astype(np.int32), schedule[:, 1].astype(bool)


def window_adaptation(is_mass_matrix_diagonal: bool, target_acceptance_rate: float = 0.8):
    """Return ``(init, update, final)`` for Stan-style windowed adaptation.

    ``init(dim, initial_step_size)``; ``update(state, is_slow, is_window_end, position,
    acceptance_rate)``; ``final(state) -> (step_size, inverse_mass_matrix)`` where the final
    step size is the dual-averaging average, as in Stan.
    """
    mm_init, mm_update, mm_final = mass_matrix_adaptation(is_mass_matrix_diagonal)
    da_init, da_update, _ = dual_averaging_adaptation(target_acceptance_rate)

    def init(dim: int, initial_step_size) -> WindowAdaptationState:
        mm_state = mm_init(dim)
        return WindowAdaptationState(
            da_init(initial_step_size),
            mm_state,
            jnp.asarray(initial_step_size, dtype=jnp.result_type(float)),
            mm_state.inverse_mass_matrix,
        )

    def update(state, is_slow, is_window_end, position, acceptance_rate):
        # NaN acceptance (a proposal off the support) counts as a rejection.
        acceptance_rate = jnp.nan_to_num(acceptance_rate, nan=0.0)
        ss_state = da_update(state.step_size_state, acceptance_rate)
        mm_state = jax.lax.cond(
            is_slow, lambda s: mm_update(s, position), lambda s: s, state.mass_matrix_state
        )
        state = WindowAdaptationState(
            ss_state, mm_state, jnp.exp(ss_state.log_step_size), state.inverse_mass_matrix
        )

        def end_window(state):
            # New mass matrix from this window; restart dual averaging from the average.
            mm_state = mm_final(state.mass_matrix_state)
            ss_state = da_init(jnp.exp(state.step_size_state.log_step_size_avg))
            return WindowAdaptationState(
                ss_state, mm_state, jnp.exp(ss_state.log_step_size), mm_state.inverse_mass_matrix
            )

        return jax.lax.cond(is_window_end, end_window, lambda s: s, state)

    def final(state):
        return jnp.exp(state.step_size_state.log_step_size_avg), state.inverse_mass_matrix

    return init, update, final
