"""Particle filters on a linear-Gaussian state-space model against a Kalman filter.

Unbiasedness: the mean of Zhat / Z over independent runs is within Monte Carlo error of 1
(|mean - 1| / MCSE < z_{1 - ALPHA/2}); a filter run on a misspecified model (wrong
observation noise) is the negative control. Filtering means are compared per step in units
of their Monte Carlo error across runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference import smc
from scipy import stats

ALPHA = 0.001
Z_CRIT = stats.norm.ppf(1 - ALPHA / 2)
A, Q, R, P0 = 0.9, 0.5, 1.0, 1.0  # x_t = A x_{t-1} + N(0, Q); y_t = x_t + N(0, R); x_0 ~ N(0, P0)
T = 30


def _data():
    rng = np.random.default_rng(3)
    x = np.zeros(T)
    x[0] = rng.normal(0, np.sqrt(P0))
    for t in range(1, T):
        x[t] = A * x[t - 1] + rng.normal(0, np.sqrt(Q))
    return (x + rng.normal(0, np.sqrt(R), T)).astype(np.float32)


def kalman(y, r=R, cumulative=False):
    """Filtering means/variances, smoothing means (RTS) and the log-likelihood.

    With ``cumulative=True`` the last value is ``log p(y_{0:t})`` for every ``t``.
    """
    m, p, ll = 0.0, P0, 0.0
    ms, ps, mp, pp, lls = [], [], [], [], []
    for t, yt in enumerate(np.asarray(y, np.float64)):
        if t > 0:
            m, p = A * m, A * A * p + Q
        mp.append(m), pp.append(p)
        s = p + r
        ll += stats.norm.logpdf(yt, m, np.sqrt(s))
        lls.append(ll)
        k = p / s
        m, p = m + k * (yt - m), (1 - k) * p
        ms.append(m), ps.append(p)
    sm = list(ms)
    for t in range(len(y) - 2, -1, -1):
        g = ps[t] * A / pp[t + 1]
        sm[t] = ms[t] + g * (sm[t + 1] - mp[t + 1])
    return np.array(ms), np.array(ps), np.array(sm), np.array(lls) if cumulative else ll


def make_ssm(r=R):
    return smc.StateSpaceModel(
        sample_initial=lambda key, n: jnp.sqrt(P0) * jax.random.normal(key, (n,)),
        sample_transition=lambda key, t, x: A * x + jnp.sqrt(Q) * jax.random.normal(key, x.shape),
        log_observation=lambda t, x, y: jax.scipy.stats.norm.logpdf(y, x, jnp.sqrt(r)),
        log_initial=lambda x: jax.scipy.stats.norm.logpdf(x, 0.0, jnp.sqrt(P0)),
        log_transition=lambda t, prev, x: jax.scipy.stats.norm.logpdf(x, A * prev, jnp.sqrt(Q)),
    )


SSM = make_ssm()
Y = _data()


def _ratio_test(log_z_hat, log_z):
    ratio = np.exp(np.asarray(log_z_hat, np.float64) - log_z)
    mcse = ratio.std(ddof=1) / np.sqrt(ratio.size)
    return abs(ratio.mean() - 1.0) / mcse


def test_likelihood_unbiased_and_filtering_means():
    """Likelihood and filtering moments through estimators that are exactly unbiased.

    The self-normalised mean sum_i W_t^i x_t^i has an O(1/N) bias that is not small here
    (the outlier y_6 = -4.7 gives +0.11 at N = 256, 6 MC standard errors over 200 runs, in
    a plain NumPy float64 filter too). Weighted by Zhat_t / Z_t it is unbiased (Del Moral
    2004): E[Zhat_t sum_i W_t^i f(x_t^i)] = Z_t E[f(x_t) | y_{0:t}], so f = x and x^2 are
    compared with the Kalman moments in units of their MC error.
    """
    kf_mean, kf_var, _, log_z = kalman(Y, cumulative=True)
    runs = [smc.particle_filter(jax.random.key(i), SSM, Y, num_particles=256) for i in range(100)]
    assert _ratio_test([r.log_likelihood for r in runs], log_z[-1]) < Z_CRIT
    log_z_hat = np.stack([np.cumsum(np.asarray(r.log_likelihood_increments, np.float64))
                          for r in runs])
    ratio = np.exp(log_z_hat - log_z)  # (runs, T)
    means = np.stack([np.asarray(r.filtering_mean, np.float64) for r in runs])
    second = np.stack([np.asarray(r.filtering_variance, np.float64) for r in runs]) + means**2
    bonferroni = stats.norm.ppf(1 - ALPHA / (4 * T))  # two moments at T steps
    for estimate, truth in ((ratio * means, kf_mean), (ratio * second, kf_var + kf_mean**2)):
        mcse = estimate.std(0, ddof=1) / np.sqrt(len(runs))
        assert (np.abs(estimate.mean(0) - truth) / mcse).max() < bonferroni
    assert np.all(np.asarray(runs[0].ess) > 0) and 0 < int(np.sum(runs[0].resampled)) < T


def test_negative_control_filtering_mean_of_another_model_is_flagged():
    """The same unbiased moment check flags a filter whose transition is too slow (A = 0.7)."""
    kf_mean, _, _, log_z = kalman(Y, cumulative=True)
    wrong = smc.StateSpaceModel(
        sample_initial=SSM.sample_initial,
        sample_transition=lambda key, t, x: 0.7 * x + jnp.sqrt(Q) * jax.random.normal(
            key, x.shape),
        log_observation=SSM.log_observation,
    )
    runs = [smc.particle_filter(jax.random.key(i), wrong, Y, num_particles=256)
            for i in range(100)]
    log_z_hat = np.stack([np.cumsum(np.asarray(r.log_likelihood_increments, np.float64))
                          for r in runs])
    estimate = np.exp(log_z_hat - log_z) * np.stack(
        [np.asarray(r.filtering_mean, np.float64) for r in runs])
    mcse = estimate.std(0, ddof=1) / np.sqrt(len(runs))
    assert (np.abs(estimate.mean(0) - kf_mean) / mcse).max() > stats.norm.ppf(
        1 - ALPHA / (4 * T))


def test_negative_control_misspecified_filter_is_flagged():
    # The filter run on perturbed data estimates another likelihood (same compiled program).
    _, _, _, log_z = kalman(Y)
    runs = [smc.particle_filter(jax.random.key(i), SSM, 1.3 * Y, num_particles=256)
            for i in range(30)]
    assert _ratio_test([r.log_likelihood for r in runs], log_z) > Z_CRIT


def test_guided_filter_with_optimal_proposal():
    """Locally optimal proposal: unbiased, and its log-likelihood varies much less."""
    _, _, _, log_z = kalman(Y)

    def post(prev_mean, prev_var, y):
        var = 1.0 / (1.0 / prev_var + 1.0 / R)
        return var * (prev_mean / prev_var + y / R), var

    def sample_initial(key, n, y):
        m, v = post(0.0, P0, y)
        return m + jnp.sqrt(v) * jax.random.normal(key, (n,))

    def sample_transition(key, t, prev, y):
        m, v = post(A * prev, Q, y)
        return m + jnp.sqrt(v) * jax.random.normal(key, prev.shape)

    proposal = smc.Proposal(
        sample_initial=sample_initial,
        log_initial=lambda x, y: jax.scipy.stats.norm.logpdf(x, *_ms(post(0.0, P0, y))),
        sample_transition=sample_transition,
        log_transition=lambda t, prev, x, y: jax.scipy.stats.norm.logpdf(
            x, *_ms(post(A * prev, Q, y))),
    )
    guided = [smc.particle_filter(jax.random.key(i), SSM, Y, num_particles=256,
                                  proposal=proposal).log_likelihood for i in range(40)]
    boot = [smc.particle_filter(jax.random.key(i), SSM, Y, num_particles=256).log_likelihood
            for i in range(40)]
    assert _ratio_test(guided, log_z) < Z_CRIT
    # One-sided F test: the guided filter's log-likelihood has smaller variance.
    f = np.var(guided, ddof=1) / np.var(boot, ddof=1)
    assert stats.f.cdf(f, 39, 39) < ALPHA


def _ms(mean_var):
    return mean_var[0], jnp.sqrt(mean_var[1])


def test_ancestor_tracing_and_particle_gibbs_match_smoother():
    """Particle Gibbs (conditional SMC + ancestor tracing) targets p(x_{0:T-1} | y).

    The chain's mean of x_t is compared with the RTS smoother in units of its batch-means MCSE.
    """
    _, _, smooth_mean, _ = kalman(Y)
    res = smc.particle_filter(jax.random.key(0), SSM, Y, num_particles=128, store_history=True)
    paths = res.smoothed_trajectories(jax.random.key(1), 5)
    assert paths.shape == (5, T)
    # The traced paths end in final particles and follow the stored ancestors.
    assert np.all(np.isin(np.asarray(paths[:, -1]), np.asarray(res.particles)))

    reference = jnp.asarray(smooth_mean, jnp.float32) * 0.0
    draws = []
    key = jax.random.key(2)
    for _ in range(250):
        key, sub = jax.random.split(key)
        reference = smc.particle_gibbs_step(sub, SSM, Y, reference, num_particles=20)
        draws.append(np.asarray(reference))
    draws = np.stack(draws[50:])  # drop burn-in
    batches = draws.reshape(10, -1, T).mean(1)
    mcse = batches.std(0, ddof=1) / np.sqrt(10)
    err = np.abs(draws.mean(0) - smooth_mean) / mcse
    # Batch means with 10 batches: Student-t with 9 dof, Bonferroni over T.
    assert err.max() < stats.t.ppf(1 - ALPHA / (2 * T), df=9)


def test_no_recompilation_for_new_data_and_keys():
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *a, **k: compiles.append(event) if "backend_compile" in event else None
    )
    smc.particle_filter(jax.random.key(0), SSM, Y, num_particles=256)
    before = len(compiles)
    smc.particle_filter(jax.random.key(1), SSM, Y + 1.0, num_particles=256)
    smc.particle_filter(jax.random.key(2), SSM, -Y, num_particles=256)
    assert len(compiles) == before


def test_bad_inputs_name_the_problem():
    def nan_at_3(t, x, y):
        return jnp.where(t == 3, jnp.nan, jax.scipy.stats.norm.logpdf(y, x, 1.0))

    # An observation no particle can explain: its density underflows to zero everywhere.
    outlier = Y.copy()
    outlier[5] = 1e20
    with pytest.raises(ValueError, match="All particle weights are zero.*time step 5"):
        smc.particle_filter(jax.random.key(0), SSM, outlier, num_particles=256)
    nan = smc.StateSpaceModel(SSM.sample_initial, SSM.sample_transition, nan_at_3)
    with pytest.raises(ValueError, match="NaN.*time step 3"):
        smc.particle_filter(jax.random.key(0), nan, Y, num_particles=256)
    with pytest.raises(ValueError, match="ess_threshold"):
        smc.particle_filter(jax.random.key(0), SSM, Y, ess_threshold=1.5)
    with pytest.raises(ValueError, match="num_particles"):
        smc.particle_filter(jax.random.key(0), SSM, Y, num_particles=0)
    with pytest.raises(ValueError, match="finite observations"):
        smc.particle_filter(jax.random.key(0), SSM, np.array([1.0, np.nan]), num_particles=5)
    with pytest.raises(ValueError, match="log_initial and log_transition"):
        bare = smc.StateSpaceModel(SSM.sample_initial, SSM.sample_transition, SSM.log_observation)
        smc.particle_filter(jax.random.key(0), bare, Y, proposal=smc.Proposal(*[None] * 4))


def test_ancestor_sampling_keeps_the_smoother_and_renews_early_states():
    """Particle Gibbs with ancestor sampling, 5 particles: the chain's mean of x_t matches
    the RTS smoother (batch-means MCSE), and x_0 changes at most sweeps, where plain particle
    Gibbs with so few particles seldom moves it (path degeneracy)."""
    _, _, smooth_mean, _ = kalman(Y)
    moves = {}
    for ancestor_sampling in (True, False):
        reference = jnp.zeros(T, jnp.float32)
        draws, key = [], jax.random.key(5)
        for _ in range(300):
            key, sub = jax.random.split(key)
            reference = smc.particle_gibbs_step(sub, SSM, Y, reference, num_particles=5,
                                                ancestor_sampling=ancestor_sampling)
            draws.append(np.asarray(reference))
        draws = np.stack(draws[50:])
        moves[ancestor_sampling] = np.mean(np.diff(draws[:, 0]) != 0)
        if ancestor_sampling:
            batches = draws.reshape(10, -1, T).mean(1)
            mcse = batches.std(0, ddof=1) / np.sqrt(10)
            err = np.abs(draws.mean(0) - smooth_mean) / mcse
            assert err.max() < stats.t.ppf(1 - ALPHA / (2 * T), df=9)
    assert moves[True] > 0.5 and moves[False] < 0.5 * moves[True], moves
    bare = smc.StateSpaceModel(SSM.sample_initial, SSM.sample_transition, SSM.log_observation)
    with pytest.raises(ValueError, match="log_transition for ancestor sampling"):
        smc.particle_gibbs_step(jax.random.key(0), bare, Y, jnp.zeros(T), ancestor_sampling=True)
