"""Chains and particles split over 4 (virtual CPU) devices of one process give the draws
of one device, padding included (6 chains over 4 devices run as 8).

Tolerance, not bit-for-bit, for NUTS: XLA:CPU compiles a ``vmap`` over a batch of 1 or 2
rows to code that rounds differently in the last bit from the code for larger batches
(seen on one device, without any sharding: one NUTS step of a chain alone and of the same
chain among 4 differ by 1 ulp), and the chains' dynamics amplify that. In float64 the draws
then agree to ~1e-7 (observed 6e-8; the 6-chain run was bit-for-bit) after 100 + 100
steps, hence ``atol=1e-5``; in float32 the same ulps grow to O(1). Tempered SMC's
population steps run replicated on every device (only the moves are split): its draws and
log-evidence are bit-for-bit equal.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest


def test_four_devices_give_the_draws_of_one(launch, reference, tmp_path):
    sharded = launch.single(tmp_path / "four_devices.npz", launch.runs, num_devices=4)
    assert int(reference["device_count"]) == 1 and int(sharded["device_count"]) == 4
    for chains in (4, 6):
        assert int(sharded[f"nuts_{chains}_devices"]) == 4
        assert sharded[f"nuts_{chains}"].shape == reference[f"nuts_{chains}"].shape \
            == (chains, 100, 2)  # the padding chains of the 6-chain run are dropped
        assert not sharded[f"nuts_{chains}_padding_warning"]  # chains >= devices: silent
        np.testing.assert_allclose(sharded[f"nuts_{chains}"], reference[f"nuts_{chains}"],
                                   rtol=0, atol=1e-5)
        # Every chain is its own (no chain duplicated into another's place).
        assert len({float(c.sum()) for c in sharded[f"nuts_{chains}"]}) == chains
    assert int(sharded["smc_devices"]) == 4
    np.testing.assert_array_equal(sharded["smc"], reference["smc"])
    assert float(sharded["smc_log_evidence"]) == float(reference["smc_log_evidence"])


STUCK = textwrap.dedent("""
    import sys, jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np, ppl
    TRAP = jnp.array([8.0, 0.0, 0.0])
    def logdensity(x):  # N(0, I) and a walled-off mode of 1e-6 of the mass at TRAP
        main = -0.5 * jnp.sum(x**2)
        trap = jnp.log(1e-6) - 0.5 * jnp.sum(((x - TRAP) / 0.3) ** 2) - 3 * jnp.log(0.3)
        return jnp.logaddexp(main, trap)
    init = np.zeros((6, 3))
    init[5] = np.asarray(TRAP)  # the last chain, whose copies pad the batch, is stuck
    post = ppl.infer(ppl.from_logdensity(logdensity, jnp.zeros(3)), "nuts", key=0,
                     num_chains=6, num_warmup=200, num_samples=100, initial_position=init,
                     progress_bar=False, warn=False)
    assert "chain 5" in post.meta["warnings"][0] and "restarted" in post.meta["warnings"][0]
    np.save(sys.argv[1], post.samples["x"])
""")


@pytest.mark.slow
def test_a_stuck_padded_chain_is_restarted_as_on_one_device(tmp_path):
    draws = {}
    for count in (1, 4):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        out = tmp_path / f"{count}.npy"
        done = subprocess.run([sys.executable, "-c", STUCK, str(out)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        draws[count] = np.load(out)
    np.testing.assert_allclose(draws[4], draws[1], rtol=0, atol=1e-5)
    assert abs(draws[4][5, :, 0].mean()) < 0.5  # chain 5 left the trap at 8
