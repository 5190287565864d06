"""The reward-model protocol's host pieces: HostReward, aggregation, score checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from ppl.reward_model import AGGREGATIONS, HostReward, aggregate, check_scores


def test_host_reward_returns_one_float_per_trace_and_names_mistakes():
    reward = HostReward(lambda prompts, traces: [len(t) / 10 for t in traces], name="length")
    np.testing.assert_allclose(reward(["p", "q"], ["abc", "abcdefgh"]), [0.3, 0.8])
    assert reward([], []).shape == (0,)
    with pytest.raises(ValueError, match="as many prompts as traces"):
        reward(["p"], ["a", "b"])
    wrong = HostReward(lambda prompts, traces: [0.5], name="short")
    with pytest.raises(ValueError, match="'short' to return 2 scores"):
        wrong(["p", "q"], ["a", "b"])
    with pytest.raises(TypeError, match="callable"):
        HostReward(3)


def test_aggregations_of_step_scores():
    previous, step = jnp.array([1.0, 0.5, 0.8]), jnp.array([0.9, 0.9, 0.2])
    np.testing.assert_allclose(aggregate("last", previous, step), [0.9, 0.9, 0.2])
    np.testing.assert_allclose(aggregate("min", previous, step), [0.9, 0.5, 0.2])
    np.testing.assert_allclose(aggregate("product", previous, step), [0.9, 0.45, 0.16])
    assert AGGREGATIONS == ("last", "min", "product")
    with pytest.raises(ValueError, match="aggregation"):
        aggregate("mean", previous, step)


def test_bad_scores_name_the_particle_and_step():
    check_scores(np.array([0.0, 0.5, 1.0]), who="r", step=0)
    with pytest.raises(ValueError, match=r"particle 1 at step 3.*\[0, 1\]"):
        check_scores(np.array([0.2, np.nan, 0.4]), who="r", step=3)
    with pytest.raises(ValueError, match=r"particle \(2, 0\) at step 1"):
        check_scores(np.array([0.2, 1.5]), who="r", step=1, rows=[(0, 0), (2, 0)])
