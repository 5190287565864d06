"""TARP, SBC and expected coverage on a Gaussian problem with a known posterior.

theta ~ N(0, I), y | theta ~ N(theta, I), so p(theta | y) = N(y / 2, I / 2). The exact
posterior must pass every check; over-confident (sd x 0.6), under-confident (sd x 1.6)
and biased (mean + 1 sd) approximations must each be flagged by each check.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ppl.diagnostics.expected_coverage import expected_coverage
from ppl.diagnostics.sbc import sbc_ranks, sbc_test, thin_draws
from ppl.diagnostics.tarp import tarp, tarp_credibility

NUM_SIMS, NUM_DRAWS, DIM = 300, 99, 2
CASES = {"exact": (1.0, 0.0), "overconfident": (0.6, 0.0), "underconfident": (1.6, 0.0),
         "biased": (1.0, 1.0)}


def gaussian_problem(case: str, seed: int = 0):
    scale, bias = CASES[case]
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(NUM_SIMS, DIM))
    y = theta + rng.normal(size=(NUM_SIMS, DIM))
    mean, sd = y / 2 + bias * np.sqrt(0.5), np.sqrt(0.5) * scale
    draws = mean[:, None] + sd * rng.normal(size=(NUM_SIMS, NUM_DRAWS, DIM))

    def log_post(x):  # the exact posterior density, up to a constant
        return -np.sum((x - y[:, None] / 2) ** 2, axis=-1)

    return theta, draws, log_post(draws), log_post(theta[:, None])[:, 0]


@pytest.mark.parametrize("case", list(CASES))
def test_tarp_flags_exactly_the_wrong_posteriors(case):
    theta, draws, _, _ = gaussian_problem(case)
    res = tarp(draws, theta, key=jax.random.key(1))
    assert res.passed() == (case == "exact"), (case, res.p_value)
    assert res.alpha[0] == 0 and res.alpha[-1] == 1 and res.ecp[-1] == 1
    assert np.all(res.ecp_lower <= res.ecp + 1e-12) and np.all(res.ecp <= res.ecp_upper + 1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_sbc_flags_exactly_the_wrong_posteriors(case):
    theta, draws, _, _ = gaussian_problem(case)
    ranks = sbc_ranks(draws, theta, key=jax.random.key(2))
    res = sbc_test(ranks, NUM_DRAWS)
    assert res.passed() == (case == "exact"), (case, res.p_values)


@pytest.mark.parametrize("case", list(CASES))
def test_expected_coverage_flags_exactly_the_wrong_posteriors(case):
    theta, draws, ld, lt = gaussian_problem(case)
    res = expected_coverage(draws, theta, log_density_draws=ld, log_density_truths=lt)
    assert res.passed() == (case == "exact"), (case, res.min_p_value)
    scale = CASES[case][0]
    if case != "exact":  # the direction of the miss is the right one
        mid = int(np.argmin(np.abs(res.levels - 0.8)))
        assert (res.central[mid].mean() < res.central_nominal[mid]) == (scale <= 1.0)


def test_tarp_matches_an_independent_loop_and_the_tarp_package():
    rng = np.random.default_rng(3)
    num_sims, num_draws, dim = 40, 97, 3
    truths = rng.normal(size=(num_sims, dim)) * [1.0, 5.0, 0.2]
    draws = truths[:, None] + rng.normal(size=(num_sims, num_draws, dim)) * [1.0, 5.0, 0.2]
    draws_copy, truths_copy = draws.copy(), truths.copy()
    res = tarp(draws, truths, key=jax.random.key(0), num_bootstrap=50)
    # The caller's arrays are untouched (the bootstrap resamples f, not the inputs).
    np.testing.assert_array_equal(draws, draws_copy)
    np.testing.assert_array_equal(truths, truths_copy)
    # A plain loop with the same reference points (given back normalised).
    low, span = truths.min(0), truths.max(0) - truths.min(0)
    refs = res.references
    f = np.empty(num_sims)
    for i in range(num_sims):
        x, t, r = (draws[i] - low) / span, (truths[i] - low) / span, refs[i]
        f[i] = np.mean(np.sqrt(((x - r) ** 2).sum(-1)) < np.sqrt(((t - r) ** 2).sum()))
    np.testing.assert_allclose(res.credibility, f)
    ecp = np.array([np.mean(f <= a + 1e-12) for a in res.alpha])  # ties count as covered
    np.testing.assert_allclose(res.ecp, ecp)
    # The tarp package (samples axis first, copies passed): same f, read through its own
    # histogram, whose edges span min(f)..max(f): compare the ECDF at its edges.
    from tarp import get_tarp_coverage

    bins = 7
    ecp_pkg, edges = get_tarp_coverage(
        np.swapaxes(draws, 0, 1).copy(), truths.copy(), references=refs.copy(),
        metric="euclidean", num_alpha_bins=bins, norm=True, bootstrap=False,
    )
    ours = np.array([np.mean(f < e) for e in edges[1:-1]] + [1.0])
    np.testing.assert_allclose(ecp_pkg[1:], ours, atol=1e-12)


def test_tarp_data_dependent_and_l1_references():
    theta, draws, _, _ = gaussian_problem("exact")
    rng = np.random.default_rng(4)
    y = theta + rng.normal(size=theta.shape)  # an observation-like pytree
    res = tarp(draws, theta, key=jax.random.key(0), observations={"y": y},
               references=lambda key, obs: obs["y"] + jax.random.normal(key, (DIM,)))
    assert res.references.shape == (NUM_SIMS, DIM)
    counts = tarp_credibility(draws, theta, np.asarray(res.references) * (theta.max(0) -
                              theta.min(0)) + theta.min(0))
    np.testing.assert_allclose(counts / NUM_DRAWS, res.credibility)
    res_l1 = tarp(draws, theta, key=jax.random.key(0), distance="l1")
    assert res_l1.credibility.shape == (NUM_SIMS,)


def test_bad_inputs_name_the_argument():
    theta, draws, _, _ = gaussian_problem("exact")
    with pytest.raises(ValueError, match="truths"):
        tarp(draws, theta[:, :1], key=jax.random.key(0))
    with pytest.raises(ValueError, match="draws"):
        tarp(draws[0], theta, key=jax.random.key(0))
    with pytest.raises(ValueError, match="references"):
        tarp(draws, theta, key=jax.random.key(0), references=np.zeros((3, DIM)))
    with pytest.raises(ValueError, match="observations"):
        tarp(draws, theta, key=jax.random.key(0), references=lambda k, o: o)
    with pytest.raises(ValueError, match="distance"):
        tarp(draws, theta, key=jax.random.key(0), distance="cosine")
    bad = theta.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite truths"):
        tarp(draws, bad, key=jax.random.key(0))
    with pytest.raises(ValueError, match="ranks"):
        sbc_test(np.full((10, 1), 7), num_draws=5)
    with pytest.raises(ValueError, match="levels"):
        expected_coverage(draws, theta, levels=[0.5, 1.0])


def test_thinning_keeps_evenly_spaced_draws_from_every_chain():
    x = np.arange(4 * 100).reshape(4, 100)  # chain c, draw j -> 100 c + j
    kept = thin_draws(x, 20)
    assert kept.shape == (20,)
    assert sorted(set(kept // 100)) == [0, 1, 2, 3]  # every chain contributes
    assert np.all(np.diff(kept[kept // 100 == 0]) >= 20)  # spread along the chain
