"""A chain stuck in a region of negligible mass is found at the end of warm-up and cured."""

import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.mcmc.sampler import find_stuck_chains

import ppl

DIM = 3
TRAP = jnp.array([8.0, 0.0, 0.0])


def _trap_logdensity(x):
    """N(0, I) holding all but 1e-6 of the mass, and a narrow walled-off mode at (8, 0, 0)."""
    main = -0.5 * jnp.sum(x**2)
    trap = jnp.log(1e-6) - 0.5 * jnp.sum(((x - TRAP) / 0.3) ** 2) - DIM * jnp.log(0.3)
    return jnp.logaddexp(main, trap)


def _run(logdensity, init, **settings):
    model = ppl.from_logdensity(logdensity, jnp.zeros(init.shape[1]))
    return ppl.infer(model, "nuts", key=0, num_chains=init.shape[0], num_warmup=400,
                     num_samples=400, initial_position=init, progress_bar=False, **settings)


def _trapped_start():
    init = np.zeros((4, DIM))
    init[2] = np.asarray(TRAP)  # chain 2 starts in the trap and cannot leave it
    return init


def test_a_chain_in_a_spurious_mode_is_restarted_from_a_healthy_one():
    with pytest.warns(RuntimeWarning, match=r"chain 2 \(posterior mass about e\^-1[3-5] "):
        post = _run(_trap_logdensity, _trapped_start())
    x = post.samples["x"]
    # Every chain now samples N(0, I): the mean is 0 within Monte Carlo error (ESS >= 100
    # per chain, pooled over 4 chains: se <= 0.05).
    assert np.all(np.abs(x.mean(axis=(0, 1))) < 5 * 0.05), x.mean(axis=(0, 1))
    assert np.abs(x[2, :, 0].mean()) < 0.5
    assert not any("R-hat" in w for w in post.meta["warnings"])


@pytest.mark.filterwarnings("ignore:R-hat")
def test_warn_keeps_the_stuck_chain_and_raise_refuses():
    with pytest.warns(RuntimeWarning, match="kept as they are"):
        post = _run(_trap_logdensity, _trapped_start(), stuck_chains="warn")
    assert post.samples["x"][2, :, 0].mean() > 7  # still in the trap, as asked
    with pytest.raises(RuntimeError, match="Stuck chain.*chain 2"):
        _run(_trap_logdensity, _trapped_start(), stuck_chains="raise")
    with pytest.raises(ValueError, match="stuck_chains one of restart, warn, raise, ignore"):
        _run(_trap_logdensity, _trapped_start(), stuck_chains="drop")


def test_a_wider_mode_of_equal_mass_is_not_stuck():
    """Negative control: in 10 dimensions a mode twice as wide sits 7 nats lower in log
    density, and holds half the mass: its chains are healthy."""
    dim, shift = 10, jnp.zeros(10).at[0].set(15.0)

    def logdensity(x):
        narrow = -0.5 * jnp.sum((x + shift) ** 2)
        wide = -0.5 * jnp.sum(((x - shift) / 2.0) ** 2) - dim * jnp.log(2.0)
        return jnp.logaddexp(narrow, wide)

    init = np.zeros((4, dim))
    init[:2, 0], init[2:, 0] = -15.0, 15.0
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = _run(logdensity, init, stuck_chains="raise")
    assert not any("Stuck" in str(w.message) for w in caught)
    # Two chains per mode, as started: R-hat says so (the truth: two modes).
    assert any("R-hat" in w for w in post.meta["warnings"])


def test_a_frozen_chain_is_stuck_and_equal_chains_are_not():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(100, 4, 5))
    lp = -0.5 * np.sum(positions**2, axis=-1)
    stuck, gaps = find_stuck_chains(lp, positions)
    assert stuck.size == 0 and np.all(gaps < 3), gaps
    positions[:, 1] = positions[0, 1]  # chain 1 never moves
    lp[:, 1] = lp[0, 1]
    stuck, _ = find_stuck_chains(lp, positions)
    assert stuck.tolist() == [1]


def test_the_draws_do_not_depend_on_the_chunking():
    """Keys follow the step index: with a progress bar (about 100 chunks) or without (two),
    the same key gives the same draws."""
    model = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
    runs = [ppl.infer(model, "nuts", key=3, num_chains=2, num_warmup=150, num_samples=120,
                      progress_bar=bar, warn=False).samples["x"] for bar in (False, True)]
    np.testing.assert_array_equal(runs[0], runs[1])
