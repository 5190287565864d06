"""NUTS (``ppl.infer(model, "nuts")``) on every posteriordb development posterior.

For every flat parameter of the reference draws: ``|mean - ref_mean| < 0.1 ref_sd`` and the
sd within 10% of the reference sd. The tolerance means something only if the run's own
Monte Carlo error is well below it, so the test also asserts ``MCSE(mean) < 0.035 ref_sd``
(bulk ESS above ~800): a bias of 0.1 sd is then about 3 MCSE away and would be caught.
The reference draws (10 chains x 1000, ESS near 10,000) add an error of about 0.01 sd.

Run lengths are the smallest that meet the MCSE bound with the fixed seed: 4 chains x
(500 warm-up + 1000 draws), except where noted in ``SETTINGS``.
"""

from __future__ import annotations

import warnings

import jax
import pytest
from ppl.models.posteriordb import POSTERIORS, load_reference_flat, stan_flat_values

import ppl
from ppl import arviz_bridge, models

BASE = {"num_chains": 4, "num_warmup": 500, "num_samples": 1000, "progress_bar": False}
SETTINGS = {
    # 24 highly correlated predictors: a diagonal mass matrix needs trees of depth 8-10 (about
    # 1000 leapfrog steps per draw on N=5000); the dense one whitens the posterior (depth <= 5).
    "diamonds-diamonds": {"dense_mass": True},
    # Intercept and slope of an uncentred covariate are correlated: ESS 1261 (diagonal) vs
    # 3228 (dense) for the same number of draws.
    "kidiq-kidscore_momiq": {"dense_mass": True},
}
# gp_pois_regr runs with the defaults (min bulk ESS 939, MCSE 0.032 sd, 6 divergences, tree
# depth 10 reached). It is fragile: with this seed, target_accept=0.9 (diagonal, 1500 draws)
# and dense_mass with target_accept=0.95 each left one chain stuck (R-hat 1.15 and 1.6).
CENTERED = "eight_schools-eight_schools_centered"
MEAN_TOLERANCE = 0.1  # in reference sds
SD_TOLERANCE = 0.1  # relative
MAX_MCSE = 0.035  # in reference sds: the test's power requirement


def _run(name: str):
    model = models.get(f"posteriordb/{name}").build()
    settings = {**BASE, **SETTINGS.get(name, {})}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = ppl.infer(model, "nuts", key=jax.random.key(0), **settings)
    flat_names, ref = load_reference_flat(name)
    ref = ref.reshape(-1, ref.shape[-1])
    values = stan_flat_values(post.samples, flat_names)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    return post, flat_names, ref, values, messages


@pytest.mark.parametrize("name", sorted(set(POSTERIORS) - {CENTERED}))
def test_nuts_matches_reference(name, posteriordb_dir):
    post, flat_names, ref, values, _ = _run(name)
    failures = []
    for i, flat_name in enumerate(flat_names):
        draws = values[flat_name]  # (chain, draw)
        ref_mean, ref_sd = ref[:, i].mean(), ref[:, i].std(ddof=1)
        mcse = float(arviz_bridge.mcse(draws[..., None])[0]) / ref_sd
        mean_error = abs(draws.mean() - ref_mean) / ref_sd
        sd_error = abs(draws.std(ddof=1) / ref_sd - 1.0)
        assert mcse < MAX_MCSE, f"{name} {flat_name}: MCSE {mcse:.3f} sd: run too short to test"
        if mean_error > MEAN_TOLERANCE or sd_error > SD_TOLERANCE:
            failures.append(
                f"{flat_name}: mean off by {mean_error:.3f} sd, sd off by {sd_error:.1%}"
            )
    assert not failures, f"{name} ({post.meta['wall_time']:.0f} s): " + "; ".join(failures)


def test_nuts_flags_the_centred_eight_schools(posteriordb_dir):
    # Observed with this seed: 101 divergent transitions (2.5%) and R-hat 1.014 for tau, so
    # the driver's RuntimeWarning fires; tau's mean is then off by about 0.12 sd. The
    # promise is the warning, not the match.
    _, _, _, _, messages = _run(CENTERED)
    assert any("divergent" in m for m in messages), messages
