"""The coverage driver's vectorised path and the batched NUTS/HMC runner behind it.

Calibrated on the zoo's conjugate normal and in agreement with the host loop; a model whose
simulator is not its likelihood fails (negative control); an interrupted run resumes
without recomputing finished chunks; a mismatched checkpoint is refused by name; padding
(a partial last chunk, a chunk not divisible by the device count) changes nothing.

Runs are short (2 chains x 150 + 150): one data set's draws are the same in two compiled
programs only up to rounding, which a long NUTS run can amplify into another (equally
valid) path, so the exact comparisons use runs too short for that to happen here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.diagnostics import coverage_cli
from ppl.inference.mcmc import batched
from ppl.inference.mcmc.sampler import find_initial_positions, find_stuck_chains

import ppl
from ppl import models

# The package re-exports the function under the module's name.
coverage_module = importlib.import_module("ppl.diagnostics.coverage")
coverage = coverage_module.coverage

ENTRY = models.get("conjugate_normal")
SHORT = {"num_chains": 2, "num_warmup": 150, "num_samples": 150}


def _noise_mismatch_model(noise_fit=0.25, noise_sim=1.0, num_obs=20):
    """``mu ~ N(0, 2)``; the likelihood says ``y_i ~ N(mu, noise_fit)``, the simulator draws
    ``y_i ~ N(mu, noise_sim)``: an over-confident posterior, a biased approximation."""
    normal = jax.scipy.stats.norm.logpdf
    return ppl.from_logdensity(
        lambda p, y: jnp.sum(normal(y, p["mu"], noise_fit)),
        {"mu": jnp.zeros(())},
        data=jnp.zeros(num_obs),
        log_prior_fn=lambda p, y: normal(p["mu"], 0.0, 2.0),
        sample_prior_fn=lambda key, n: {"mu": 2.0 * jax.random.normal(key, (n,))},
        simulate_fn=lambda key, p: p["mu"] + noise_sim * jax.random.normal(key, (num_obs,)),
    )


class _CountingChunk:
    """Wraps the compiled chunk call: counts calls, optionally interrupts one."""

    def __init__(self, inner, interrupt_at=None):
        self.inner, self.interrupt_at, self.calls = inner, interrupt_at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt  # an interrupted study
        return self.inner(*args, **kwargs)


# -- the batched runner ---------------------------------------------------------------------


def test_runner_starts_and_steps_like_the_host_driver():
    model = ENTRY.build()
    key = jax.random.key(3)
    init_key, _ = jax.random.split(key)
    positions, num_invalid = eqx.filter_jit(batched.initial_positions)(init_key, model, 4)
    np.testing.assert_array_equal(positions, find_initial_positions(init_key, model, 4))
    assert int(num_invalid) == 0
    for method in ("nuts", "hmc"):
        post = ppl.infer(model, method, key=key, progress_bar=False, warn=False, **SHORT)
        run = jax.jit(batched.batched_sampler(model, algorithm=method, **SHORT))(key)
        np.testing.assert_allclose(run.draws, post.unconstrained, atol=1e-5)
        assert int(run.info.num_gradient_evals) == post.meta["num_gradient_evals"]
        assert int(run.info.num_divergences) == int(post.stats["diverging"].sum())
        np.testing.assert_allclose(run.info.step_size, post.meta["step_size"], rtol=1e-5)
        assert run.info.rhat.shape == (1,) and 0.99 < float(run.info.rhat[0]) < 1.1


def test_runner_vmaps_over_data_sets():
    model = ENTRY.build()
    run_fn = batched.batched_sampler(model, **SHORT)
    keys = jax.random.split(jax.random.key(0), 3)
    ys = 1.0 + jax.random.normal(jax.random.key(1), (3, 20))
    together = jax.jit(jax.vmap(run_fn))(keys, {"y": ys})
    assert together.draws.shape == (3, 2, 150, 1)
    for i in range(3):
        alone = jax.jit(run_fn)(keys[i], {"y": ys[i]})
        np.testing.assert_allclose(together.draws[i], alone.draws, atol=1e-5)
    # Data sets with other means give other posteriors (the data really are swapped).
    means = together.draws.mean(axis=(1, 2, 3))
    exact = [ENTRY.exact(y=np.asarray(y))["mean"]["mu"] for y in ys]
    np.testing.assert_allclose(means, exact, atol=0.2)


def test_stuck_chain_rule_matches_the_host_driver():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(100, 4, 3))
    lp = -0.5 * np.sum(positions**2, axis=-1)
    positions[:, 2] = 8.0 + 0.01 * rng.normal(size=(100, 3))  # a chain in a spurious mode
    lp[:, 2] = -40.0 + 0.01 * rng.normal(size=100)
    stuck, _ = batched._stuck_chains(jnp.asarray(lp, jnp.float32),
                                     jnp.asarray(positions, jnp.float32))
    host_stuck, _ = find_stuck_chains(lp, positions)
    assert np.flatnonzero(np.asarray(stuck)).tolist() == host_stuck.tolist() == [2]


def test_runner_bad_settings():
    model = ENTRY.build()
    with pytest.raises(ValueError, match="algorithm"):
        batched.batched_sampler(model, algorithm="mala")
    with pytest.raises(ValueError, match="num_samples"):
        batched.batched_sampler(model, num_samples=0)
    with pytest.raises(ValueError, match="stuck_chains"):
        batched.batched_sampler(model, stuck_chains="sometimes")


# -- the vectorised coverage driver ---------------------------------------------------------


def test_vectorized_is_calibrated_and_agrees_with_the_host_loop():
    model = ENTRY.build()
    # 100 = 4 chunks of 30 with a padded last one: chunks reuse one program.
    vec = coverage(model, "nuts", num_sims=100, key=4, num_rank_draws=50, vectorized=True,
                   chunk_size=30, **SHORT)
    assert vec.verdicts == {"tarp": True, "sbc": True, "coverage": True}, vec.summary()
    assert vec.num_compilations[0] > 0 and np.all(vec.num_compilations[1:] == 0)
    host = coverage(model, "nuts", num_sims=100, key=4, num_rank_draws=50, vectorized=False,
                    **SHORT)
    np.testing.assert_array_equal(vec.truths, host.truths)
    assert set(vec.diagnostics) == set(host.diagnostics)
    assert vec.summary().keys() == host.summary().keys()
    # Statistically: every data set's posterior mean agrees within Monte Carlo error.
    sd = host.draws.std(axis=1)[:, 0]
    # The kept draws are at most num_rank_draws effective ones.
    ess = np.minimum(np.minimum(vec.diagnostics["min_ess"], host.diagnostics["min_ess"]), 50)
    gap = np.abs(vec.draws.mean(axis=1) - host.draws.mean(axis=1))[:, 0]
    assert np.all(gap < 4.0 * sd * np.sqrt(2.0 / ess)), gap.max()
    # And, same keys and initial points, the draws themselves are the host loop's.
    np.testing.assert_allclose(vec.draws, host.draws, atol=1e-5)


def test_vectorized_hmc_runs_through_the_driver():
    run = coverage(ENTRY.build(), "hmc", num_sims=12, key=5, num_rank_draws=50,
                   vectorized=True, chunk_size=12, num_integration_steps=8, **SHORT)
    assert run.num_sims == 12 and run.settings["num_integration_steps"] == 8
    assert np.all(run.diagnostics["num_gradient_evals"] == 2 * 300 * 8)


def test_simulator_unlike_the_likelihood_fails():
    run = coverage(_noise_mismatch_model(), "nuts", num_sims=60, key=6, num_rank_draws=50,
                   vectorized=True, chunk_size=30, **SHORT)
    assert not any(run.verdicts.values()), run.verdicts


def test_interrupted_study_resumes_without_recomputing(tmp_path, monkeypatch):
    model = ENTRY.build()
    settings = dict(num_sims=10, key=7, num_rank_draws=50, vectorized=True, chunk_size=4,
                    **SHORT)
    inner = coverage_module._vectorized_chunk
    interrupted = _CountingChunk(inner, interrupt_at=3)
    monkeypatch.setattr(coverage_module, "_vectorized_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        coverage(model, "nuts", out_dir=tmp_path, **settings)
    # Interrupted while dispatching chunk 2: chunk 0 was written, chunk 1 was in flight.
    chunks = sorted(p.name for p in (tmp_path / "chunks").glob("*.npz"))
    assert chunks == ["chunk_00000.npz"]
    first = (tmp_path / "chunks" / "chunk_00000.npz").stat().st_mtime_ns

    resumed_counter = _CountingChunk(inner)
    monkeypatch.setattr(coverage_module, "_vectorized_chunk", resumed_counter)
    resumed = coverage(model, "nuts", out_dir=tmp_path, **settings)
    assert resumed_counter.calls == 2  # only the unfinished chunks ran
    assert np.all(resumed.num_compilations[:4] == -1)  # loaded from its checkpoint
    assert np.all(resumed.num_compilations[4:] >= 0)
    assert (tmp_path / "chunks" / "chunk_00000.npz").stat().st_mtime_ns == first

    # Lose a finished chunk: that one, and only that one, is recomputed.
    (tmp_path / "chunks" / "chunk_00001.npz").unlink()
    again_counter = _CountingChunk(inner)
    monkeypatch.setattr(coverage_module, "_vectorized_chunk", again_counter)
    again = coverage(model, "nuts", out_dir=tmp_path, **settings)
    assert again_counter.calls == 1
    assert np.all(again.num_compilations[4:8] >= 0)
    assert np.all(np.delete(again.num_compilations, np.s_[4:8]) == -1)

    monkeypatch.setattr(coverage_module, "_vectorized_chunk", inner)
    fresh = coverage(model, "nuts", **settings)
    for run in (resumed, again):
        np.testing.assert_array_equal(run.draws, fresh.draws)
        np.testing.assert_array_equal(run.log_density_draws, fresh.log_density_draws)
        assert run.summary()["tarp"] == fresh.summary()["tarp"]


def test_checkpoints_of_another_study_are_refused_by_name(tmp_path):
    model = ENTRY.build()
    settings = dict(num_sims=6, key=8, num_rank_draws=50, out_dir=tmp_path, **SHORT)
    coverage(model, "nuts", vectorized=True, chunk_size=3, **settings)
    with pytest.raises(ValueError, match=r"\['chunk_size'\]"):
        coverage(model, "nuts", vectorized=True, chunk_size=2, **settings)
    with pytest.raises(ValueError, match=r"\['chunk_size', 'vectorized'\]"):
        coverage(model, "nuts", vectorized=False, **settings)
    with pytest.raises(ValueError, match=r"\['settings.num_warmup'\]"):
        coverage(model, "nuts", vectorized=True, chunk_size=3,
                 **{**settings, "num_warmup": 100})
    # resume=False starts the study afresh in the same directory.
    run = coverage(model, "nuts", vectorized=True, chunk_size=2, resume=False, **settings)
    assert run.num_sims == 6 and np.all(run.num_compilations >= 0)
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == 3


def test_padding_a_partial_last_chunk_changes_nothing():
    model = ENTRY.build()
    settings = dict(num_sims=10, key=9, num_rank_draws=50, vectorized=True, **SHORT)
    padded = coverage(model, "nuts", chunk_size=4, **settings)  # 4 + 4 + 2 (padded to 4)
    whole = coverage(model, "nuts", chunk_size=10, **settings)  # one chunk, no padding
    assert padded.num_sims == whole.num_sims == 10  # nothing dropped
    np.testing.assert_array_equal(padded.truths, whole.truths)
    np.testing.assert_allclose(padded.draws, whole.draws, atol=1e-5)
    np.testing.assert_allclose(padded.log_likelihood_truths, whole.log_likelihood_truths,
                               rtol=1e-6)
    np.testing.assert_array_equal(padded.diagnostics["num_gradient_evals"],
                                  whole.diagnostics["num_gradient_evals"])


def test_bad_arguments():
    model = ENTRY.build()
    with pytest.raises(ValueError, match="'smc'"):
        coverage(model, "smc", num_sims=4, key=0, vectorized=True)
    with pytest.raises(ValueError, match="initial_position"):
        coverage(model, "nuts", num_sims=4, key=0, vectorized=True,
                 initial_position=np.zeros(1))
    with pytest.raises(ValueError, match="vectorized"):
        coverage(model, "nuts", num_sims=4, key=0, vectorized="yes")
    with pytest.raises(ValueError, match="chunk_size"):
        coverage(model, "nuts", num_sims=4, key=0, chunk_size=0)
    with pytest.raises(ValueError, match="num_rank_draws"):
        coverage(model, "nuts", num_sims=4, key=0, vectorized=True, num_rank_draws=1000,
                 **SHORT)


def test_cli_flags(tmp_path):
    parser = argparse.ArgumentParser()
    coverage_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["coverage", "conjugate_normal", "--num-sims", "8", "--out",
                              str(tmp_path), "--chunk-size", "4", "--num-rank-draws", "50",
                              "--set", "num_chains=2", "--set", "num_warmup=150",
                              "--set", "num_samples=150"])
    assert args.vectorized is None and args.chunk_size == 4
    assert args.run(args) in (0, 1)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["vectorized"] is True and manifest["chunk_size"] == 4
    assert len(list((tmp_path / "chunks").glob("*.npz"))) == 2
    assert (tmp_path / "report.html").exists()
    args = parser.parse_args(["coverage", "conjugate_normal", "--no-vectorized", "--out", "x"])
    assert args.vectorized is False


_SHARDED = """
import json, sys
import importlib
import jax, numpy as np
from ppl import models
coverage = importlib.import_module("ppl.diagnostics.coverage").coverage
assert len(jax.devices()) == 4, jax.devices()
run = coverage(models.get("conjugate_normal").build(), "nuts", num_sims=10, key=10,
               num_rank_draws=50, vectorized=True, chunk_size=3, num_chains=2,
               num_warmup=150, num_samples=150)
np.savez(sys.argv[1], draws=run.draws, truths=run.truths,
         compilations=run.num_compilations)
"""


def test_sharded_over_four_devices_equals_one_device(tmp_path):
    # Chunks of 3 on 4 devices: every call padded to 4 (and the last, 1 real, to 4 too).
    out = tmp_path / "sharded.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    subprocess.run([sys.executable, "-c", textwrap.dedent(_SHARDED), str(out)], env=env,
                   check=True, cwd=Path(__file__).resolve().parents[2], timeout=600)
    with np.load(out) as f:
        sharded = {k: f[k] for k in f.files}
    single = coverage(ENTRY.build(), "nuts", num_sims=10, key=10, num_rank_draws=50,
                      vectorized=True, chunk_size=3, **SHORT)
    assert sharded["draws"].shape == single.draws.shape == (10, 50, 1)
    np.testing.assert_array_equal(sharded["truths"], single.truths)
    np.testing.assert_allclose(sharded["draws"], single.draws, atol=1e-5)
    assert sharded["compilations"][0] > 0 and np.all(sharded["compilations"][1:] == 0)
