"""Resamplers: offspring counts are unbiased, E[O_i] = N W_i (chi-square, one failure budget).

Each scheme is tested at level ALPHA = 0.001, at N = 40 and at N = 200 (where the blocked
matrix-product cumulative sums and their padding are used): eight tests, a suite-level
false-alarm budget of 0.8%. A resampler that uses squared weights (a plausible bug) is the
negative control.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference import smc
from ppl.inference.smc import base, resampling
from scipy import stats

ALPHA = 0.001
NUM_PARTICLES = 40
NUM_REPS = 4000


def _weights(num=NUM_PARTICLES):
    rng = np.random.default_rng(0)
    w = rng.gamma(0.5, size=num)
    w[[3, 17]] = 0.0  # zero weights must never be selected
    return w / w.sum()


def _counts(resample_fn, seed, num=NUM_PARTICLES):
    log_w = jnp.log(jnp.asarray(_weights(num), jnp.float32))
    keys = jax.random.split(jax.random.key(seed), NUM_REPS)

    @jax.jit
    def run(keys):
        idx = jax.vmap(lambda k: resample_fn(k, log_w, num))(keys)
        return jax.vmap(lambda i: jnp.bincount(i, length=num))(idx)

    return np.asarray(run(keys))


def _chi_square_pvalue(counts, w):
    """Wald test of mean offspring = N w on the particles with random counts."""
    expected = w.size * w
    mean, var = counts.mean(0), counts.var(0, ddof=1)
    random = var > 0
    # Deterministic counts must equal their expectation up to rounding.
    assert np.all(np.abs(mean[~random] - expected[~random]) < 1.0)
    z2 = (mean[random] - expected[random]) ** 2 / (var[random] / NUM_REPS)
    # Counts sum to N: one linear constraint, so the statistic has (k - 1) degrees of freedom
    # only approximately; use k (conservative) for a Wald statistic of independent means.
    return stats.chi2.sf(z2.sum(), df=int(random.sum()))


def _systematic_pvalue(counts, w):
    """Exact test for systematic resampling: O_i - floor(N w_i) ~ Bernoulli(frac(N w_i)).

    Every systematic count is a function of one uniform, so counts are strongly correlated
    across particles and a sum of squared z-scores is not chi-square (p < 0.01 on 3 of 8
    seeds with float64). Per particle, the number of replicates that round up is exactly
    Binomial(NUM_REPS, frac(N w_i)); the smallest two-sided p-value, Bonferroni-corrected,
    is valid whatever the dependence.
    """
    scaled = w.size * w
    floor = np.floor(scaled)
    extra = counts - floor
    if not np.all((extra == 0) | (extra == 1)):
        return 0.0  # impossible for systematic resampling with these weights
    pvalues = [stats.binomtest(int(k), counts.shape[0], f).pvalue if 0 < f < 1 else float(k == 0)
               for k, f in zip(extra.sum(0), scaled - floor, strict=True)]
    return min(1.0, len(pvalues) * min(pvalues))


def _pvalue(name, counts, w):
    return (_systematic_pvalue if name == "systematic" else _chi_square_pvalue)(counts, w)


@pytest.mark.parametrize("num", [NUM_PARTICLES, 200])
@pytest.mark.parametrize("name", ["multinomial", "systematic", "stratified", "residual"])
def test_offspring_unbiased(name, num):
    w = _weights(num)
    counts = _counts(resampling.RESAMPLERS[name], seed=1, num=num)
    assert counts.sum(1).min() == counts.sum(1).max() == num
    assert counts[:, [3, 17]].sum() == 0
    assert _pvalue(name, counts, w) > ALPHA


@pytest.mark.parametrize("name", ["multinomial", "systematic", "stratified", "residual"])
def test_zero_weights_never_selected_at_scale(name):
    """N = 10^4 with zeros on block boundaries and at both ends: never an ancestor.

    Float cumulative sums computed in blocks round differently on either side of a block
    boundary, and ``n - u`` or a uniform can round onto the last plateau; each of these
    handed slots to zero-weight particles before the cumulative weights were made exact.
    """
    num = 10_000
    rng = np.random.default_rng(5)
    w = rng.gamma(0.3, size=num)
    zero = rng.uniform(size=num) < 0.5
    zero[63::64] = zero[64::64] = True
    zero[:2] = zero[-3:] = True
    w[zero] = 0.0
    log_w = jnp.log(jnp.asarray(w / w.sum(), jnp.float32))
    run = jax.jit(jax.vmap(lambda k: resampling.RESAMPLERS[name](k, log_w, num)))
    idx = np.asarray(run(jax.random.split(jax.random.key(0), 200)))
    assert np.all((idx >= 0) & (idx < num))
    assert not zero[idx].any()
    assert np.all(np.diff(idx, axis=1) >= 0) or name == "residual"


def test_stratified_without_search_matches_sorted_search():
    """The O(N) stratified indices equal a binary search of the points (j + u_j) / n."""
    num = 1000
    log_w = jnp.asarray(np.random.default_rng(1).normal(size=num) * 3, jnp.float32)
    key = jax.random.key(3)
    points = (jnp.arange(num) + jax.random.uniform(key, (num,))) / num
    cdf = resampling._cdf(log_w)
    expected = np.minimum(np.searchsorted(np.asarray(cdf), np.asarray(points), side="right"),
                          num - 1)
    assert np.array_equal(np.asarray(resampling.stratified(key, log_w, num)), expected)


@pytest.mark.parametrize("num", [1, 63, 64, 65, 1000, 10_007])
def test_cumulative_sum_matches_numpy(num):
    rng = np.random.default_rng(num)
    x = rng.uniform(size=num).astype(np.float32)
    got = np.asarray(resampling.cumulative_sum(jnp.asarray(x)))
    assert np.abs(got - np.cumsum(x.astype(np.float64))).max() < 1e-6 * num
    counts = rng.integers(0, 4, size=num).astype(np.int32)
    assert np.array_equal(np.asarray(resampling.cumulative_sum(jnp.asarray(counts))),
                          np.cumsum(counts))


def test_negative_control_biased_resampler_is_flagged():
    def squared(key, log_weights, n):  # a bug: squares the weights
        return resampling.systematic(key, 2.0 * log_weights, n)

    counts, w = _counts(squared, seed=1), _weights()
    assert _systematic_pvalue(counts, w) < ALPHA
    assert _chi_square_pvalue(counts, w) < ALPHA


def test_lower_variance_schemes():
    """Systematic/stratified/residual have lower offspring variance than multinomial."""
    var = {n: _counts(f, 2).var(0).sum() for n, f in resampling.RESAMPLERS.items()}
    for name in ("systematic", "stratified", "residual"):
        assert var[name] < 0.6 * var["multinomial"]


def test_host_loop_step_with_python_objects():
    """The same pieces drive a host loop over non-array particles (lists of strings)."""
    particles = ["a", "b", "c", "d"]
    log_w = jnp.log(jnp.array([0.0, 0.0, 1.0, 0.0]) + 1e-30)
    idx, log_w_after, resampled, ess = base.resample_decision(
        jax.random.key(0), log_w, resampling="systematic", ess_threshold=0.5
    )
    assert bool(resampled) and float(ess) < 1.01
    assert base.gather(particles, idx, host=True) == ["c"] * 4
    new_log_w, increment, num_nan, all_zero = base.reweight(log_w_after, jnp.zeros(4))
    assert np.allclose(np.exp(new_log_w), 0.25) and abs(float(increment)) < 1e-6
    # Never resample below the threshold.
    idx, _, resampled, _ = base.resample_decision(
        jax.random.key(0), jnp.zeros(4), ess_threshold=0.5
    )
    assert not bool(resampled) and list(np.asarray(idx)) == [0, 1, 2, 3]


def test_pytree_gather_and_generic_step_under_scan():
    """smc.base.step over a dict pytree inside lax.scan: log Z of a trivial model is exact."""
    # M_t: x -> x + N(0, 1); G_t = 1/2 for every particle: log Z_T = T log(1/2).
    def move(key, parents):
        return {"x": parents["x"] + jax.random.normal(key, parents["x"].shape),
                "n": parents["n"] + 1}

    def potential(parents, particles):
        return jnp.full(particles["x"].shape[0], jnp.log(0.5))

    state = base.init({"x": jnp.zeros((16, 2)), "n": jnp.zeros(16, jnp.int32)}, jnp.zeros(16))

    def body(state, key):
        return base.step(key, state, move_fn=move, log_potential_fn=potential,
                         resampling="stratified", ess_threshold=1.0)

    final, info = jax.lax.scan(body, state, jax.random.split(jax.random.key(0), 7))
    assert np.isclose(float(final.log_normalizer), 7 * np.log(0.5), atol=1e-5)
    assert np.all(np.asarray(final.particles["n"]) == 7) and bool(np.all(info.resampled))


def test_bad_resampling_inputs():
    with pytest.raises(ValueError, match="resampling"):
        resampling.get_resampler("bogus")
    with pytest.raises(ValueError, match="ess_threshold"):
        base.check_ess_threshold(1.5)
    with pytest.raises(ValueError, match="ess_threshold"):
        base.check_ess_threshold(-0.1)
    with pytest.raises(ValueError, match="num_particles"):
        base.check_num_particles(0)
    assert smc.effective_sample_size(jnp.zeros(10)) == pytest.approx(10.0)


def test_step_gathers_only_on_steps_that_resample():
    """A step that keeps its particles returns them untouched (host) and, under jit, moves
    the gather into the branch of an XLA conditional (no copy on the other branch)."""
    particles = {"x": jnp.arange(8.0)}
    assert base.gather_if(False, particles, jnp.zeros(8, jnp.int32)) is particles
    assert np.all(base.gather_if(True, particles, jnp.zeros(8, jnp.int32))["x"] == 0)
    state = base.init(particles, jnp.zeros(8))
    jaxpr = jax.make_jaxpr(
        lambda key, s: base.step(key, s, move_fn=lambda k, p: p,
                                 log_potential_fn=lambda a, b: jnp.zeros(8), ess_threshold=0.5)
    )(jax.random.key(0), state)
    top_level = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    assert "gather" not in top_level and top_level.count("cond") >= 2, top_level


def _groups_counts(log_w, active, keys, **kw):
    counts = []
    for key in keys:
        decision = base.resample_groups(key, log_w, active=active, ess_threshold=1.0, **kw)
        anc = np.asarray(decision.ancestors)
        counts.append([np.bincount(row, minlength=log_w.shape[1]) for row in anc])
    return np.asarray(counts, float), decision


@pytest.mark.parametrize("name", ["multinomial", "systematic", "stratified"])
def test_partial_resampling_is_unbiased_and_keeps_finished_particles(name):
    """Among the active particles E[offspring_i] = |S| W_i / W_S; finished ones keep their
    slot and weight; the active mass is shared equally."""
    w = np.array([[0.05, 0.3, 0.1, 0.25, 0.2, 0.1], [0.1, 0.2, 0.3, 0.1, 0.2, 0.1]])
    active = np.array([[True, True, False, True, True, False], [True] * 6])
    keys = jax.random.split(jax.random.key(3), 600)
    counts, decision = _groups_counts(jnp.log(w), active, keys, resampling=name)
    for g in range(2):
        s = active[g]
        expected = np.where(s, s.sum() * w[g] / w[g][s].sum(), 1.0)
        mean = counts[:, g].mean(0)
        se = counts[:, g].std(0, ddof=1) / np.sqrt(len(keys)) + 1e-9
        assert np.all(np.abs(mean - expected) < 4.5 * se + 1e-9), (name, g, mean, expected)
        # Finished slots: themselves, every time.
        assert np.all(counts[:, g][:, ~s] == 1)
    after = np.exp(np.asarray(decision.log_weights))
    np.testing.assert_allclose(after[0][active[0]], w[0][active[0]].sum() / active[0].sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(after[0][~active[0]], w[0][~active[0]], rtol=1e-5)


def test_group_draws_depend_on_their_own_key_only():
    log_w = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.25] * 4]))
    keys = jax.random.split(jax.random.key(0), 3)
    together = base.resample_groups(keys, log_w, ess_threshold=1.0).ancestors
    alone = base.resample_groups(keys[1:2], log_w[1:2], ess_threshold=1.0).ancestors
    np.testing.assert_array_equal(together[1], alone[0])
    # Adaptive decisions are per group: a uniform group does not resample.
    decision = base.resample_groups(keys, log_w, ess_threshold=0.9)
    assert list(np.asarray(decision.resampled)) == [True, True, False]
    flat = np.asarray(decision.flat_ancestors())
    assert list(flat[8:]) == [8, 9, 10, 11]


def test_conditional_resampling_keeps_the_reference_in_slot_zero():
    log_w = jnp.log(jnp.array([[0.01, 0.49, 0.5], [0.0001, 0.5, 0.4999]]))
    for key in jax.random.split(jax.random.key(1), 20):
        anc = np.asarray(base.resample_groups(key, log_w, ess_threshold=1.0, keep_first=True,
                                              resampling="multinomial").ancestors)
        assert np.all(anc[:, 0] == 0)


def test_resampling_by_other_weights_is_corrected_without_bias():
    """Drawing ancestors from v and carrying w / v keeps E[sum_j W'_j f(X_j)] = sum_i W_i f(X_i);
    the same draws with uniform carried weights (no correction) are biased."""
    w = np.array([[0.05, 0.15, 0.3, 0.5]])
    log_v = jnp.log(jnp.array([[0.25, 0.25, 0.25, 0.25]]))
    f = np.array([1.0, 2.0, 3.0, 4.0])
    estimates, naive = [], []
    for key in jax.random.split(jax.random.key(2), 800):
        d = base.resample_groups(key, jnp.log(w), ess_threshold=1.0, resample_log_weights=log_v,
                                 resampling="multinomial")
        anc = np.asarray(d.ancestors)[0]
        after = np.exp(np.asarray(d.log_weights))[0]
        estimates.append(np.sum(after * f[anc]))
        naive.append(np.mean(f[anc]))
    truth = float(np.sum(w * f))
    se = np.std(estimates, ddof=1) / np.sqrt(len(estimates))
    assert abs(np.mean(estimates) - truth) < 4 * se
    assert abs(np.mean(naive) - truth) > 10 * np.std(naive, ddof=1) / np.sqrt(len(naive))


def test_annealing_reaches_the_target_ess_and_keeps_zero_weights():
    log_w = jnp.array([0.0, -3.0, -6.0, -12.0, -jnp.inf, -1.0])
    annealed, b = resampling.anneal_to_ess(log_w, 0.6)
    ess = float(smc.effective_sample_size(annealed))
    assert 0 < float(b) < 1 and abs(ess - 0.6 * 6) < 0.01
    assert float(annealed[4]) == -np.inf
    flat, b_flat = resampling.anneal_to_ess(jnp.zeros(5), 0.9)
    assert float(b_flat) == 1.0 and np.all(np.asarray(flat) == 0)
    # Only the active particles count towards the target.
    active = jnp.array([True, True, True, False, False, True])
    annealed, b = resampling.anneal_to_ess(log_w, 0.6, active=active)
    ess = float(smc.effective_sample_size(jnp.where(active, annealed, -jnp.inf)))
    assert abs(ess - 0.6 * 4) < 0.01


def test_offspring_in_place_keep_survivors_in_their_slots():
    rng = np.random.default_rng(0)
    for _ in range(50):
        ancestors = np.sort(rng.integers(0, 12, 12)).astype(np.int32)
        arranged = np.asarray(base.in_place(jnp.asarray(ancestors)))
        assert sorted(arranged.tolist()) == ancestors.tolist()  # the same offspring
        survivors = np.unique(ancestors)
        assert np.all(arranged[survivors] == survivors)  # each survivor in its own slot
        assert np.sum(arranged != np.arange(12)) == 12 - survivors.size  # fewest moves
