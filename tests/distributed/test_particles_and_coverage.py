"""``devices=`` for the particle VI engines and the coverage driver, on 4 virtual CPU devices.

One subprocess (``_worker.py --particles-coverage``, 4 devices) runs each thing on
``devices=1`` (the unsharded program) and on all 4, and the tests compare:

- coin SVGD and SVGD (8 particles, 50 iterations, a 2-d Gaussian): the particle axis split
  over 4 devices, XLA's partitioner gathering the particles for the all-pairs kernel sums.
  The particles agree within 1e-5 but not bit for bit (on this CPU: up to ~2e-6 for coin
  SVGD, ~1e-7 for SVGD in float32), because the sharded kernel sums add in another order.
- 6 particles: ``devices=4`` is refused (padding would join the interacting population),
  naming both numbers and the remedy; the default runs on the most devices dividing 6 (3),
  with a warning.
- the vectorised coverage driver (conjugate normal, NUTS, 6 simulations, padded to 8 over
  4 devices): the same per-simulation draws as on one device (bit for bit here).

In this process (one device): ``ppl coverage --devices N`` parses, and
``ppl.sharding.dividing_placement`` keeps one device without a warning. The file takes
about 15 s (the subprocess is most of it).
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def runs(tmp_path_factory, launch) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("particles") / "four_devices.npz"
    return launch.single(out, ["--particles-coverage"], num_devices=4)


@pytest.mark.parametrize("method", ["coin_svgd", "svgd"])
def test_particles_over_four_devices_equal_one_device(runs, method):
    assert int(runs["device_count"]) == 4
    assert int(runs[f"{method}_1_devices"]) == 1 and int(runs[f"{method}_4_devices"]) == 4
    one, four = runs[f"{method}_1"], runs[f"{method}_4"]
    assert one.shape == four.shape == (1, 8, 2)
    assert np.all(np.isfinite(four))
    np.testing.assert_allclose(four, one, atol=1e-5, rtol=0)


def test_particles_that_do_not_divide_are_refused_or_use_fewer_devices(runs):
    refusal = str(runs["refusal"])
    assert "6 particles" in refusal and "4 devices" in refusal, refusal
    assert "devices= a count that divides 6" in refusal, refusal
    assert int(runs["default_6_devices"]) == 3
    warning = str(runs["default_6_warning"])
    assert "running on 3" in warning and "4 devices" in warning, warning


def test_coverage_over_four_devices_equals_one_device(runs):
    one, four = runs["coverage_1_draws"], runs["coverage_4_draws"]
    assert one.shape == four.shape == (6, 50, 1)  # the 2 padding simulations dropped
    np.testing.assert_array_equal(runs["coverage_4_truths"], runs["coverage_1_truths"])
    np.testing.assert_allclose(four, one, atol=1e-5, rtol=0)


def test_coverage_cli_takes_devices():
    import argparse

    from ppl.diagnostics import coverage_cli

    parser = argparse.ArgumentParser()
    coverage_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["coverage", "conjugate_normal", "--out", "x", "--devices", "2"])
    assert args.devices == 2
    assert parser.parse_args(["coverage", "conjugate_normal", "--out", "x"]).devices is None


def test_dividing_placement_on_this_process():
    import warnings

    import jax

    from ppl.sharding import dividing_placement

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one device divides everything: no warning
        placement = dividing_placement(1, 7, "particle")
    assert placement.num_devices == 1 and placement.devices == jax.devices()[:1]
