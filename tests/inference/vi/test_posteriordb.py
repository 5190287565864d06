"""Flow VI with default settings on posteriordb dev posteriors (the zoo's programs).

Criterion (issue 5): |mean - ref| < 0.2 ref-sd and sd within 20% of the reference sd for
every Stan flat parameter, with ``ppl.infer(model, "flow_vi", key=0)`` and no settings.
The reference draws (10 chains x 1000) carry their own Monte Carlo error, about 0.01 sd for
the mean: negligible against 0.2. Results for all nine dev posteriors are in
bench/results/vi.md (``bench/vi.py --posteriordb``); this file tests the subset that fits
its time budget:

- kidiq-kidscore_momiq: an uncentred covariate, posterior sds 0.06 and 6 under a flat
  (improper) prior: the badly scaled case that defeats unwhitened flows.
- eight_schools-eight_schools_noncentered: hierarchical, a heavy-tailed tau.
- arK-arK: an autoregression, correlated coefficients.
- eight_schools-eight_schools_centered: no proper mode (the density grows without bound as
  tau -> 0), so the default falls back from the Laplace whitening to the prior scale.
- garch-garch11: flat (improper) priors on constrained, dependent supports.
- gp_pois_regr-gp_pois_regr: the reverse-KL fit is under-dispersed in the GP
  hyperparameters (plain draws from q: the sd of alpha 15-25% low over seeds); the default
  PSIS resampling of the draws must correct it.

Not tested here (time), but in the table: diamonds, hmm_example and low_dim_gauss_mix
(pass).

Negative control: the same criterion rejects reference draws shifted by 0.3 sd or shrunk
to 75% of their spread.
"""

import numpy as np
import pytest
from ppl.models.posteriordb import load_reference_flat, stan_flat_values

import ppl
from ppl import models

TESTED = ["kidiq-kidscore_momiq", "eight_schools-eight_schools_noncentered", "arK-arK",
          "eight_schools-eight_schools_centered", "garch-garch11", "gp_pois_regr-gp_pois_regr"]


def criterion(draws, reference):
    """``(|dmean| / ref sd, |sd ratio - 1|)`` per column; passes when < 0.2 both."""
    ref_mean, ref_sd = reference.mean(0), reference.std(0)
    return np.abs(draws.mean(0) - ref_mean) / ref_sd, np.abs(draws.std(0) / ref_sd - 1)


def passes(draws, reference):
    z, r = criterion(draws, reference)
    return bool(np.all(z < 0.2) and np.all(r < 0.2))


def flat_draws(post, flat_names):
    values = stan_flat_values(post.samples, flat_names)
    return np.stack([np.asarray(values[n]).reshape(-1) for n in flat_names], -1)


@pytest.mark.parametrize("name", TESTED)
def test_flow_vi_defaults_match_reference(posteriordb_dir, name):
    model = models.get(f"posteriordb/{name}").build()
    post = ppl.infer(model, "flow_vi", key=0, progress_bar=False)
    flat_names, reference = load_reference_flat(name)
    reference = reference.reshape(-1, len(flat_names))
    draws = flat_draws(post, flat_names)
    z, r = criterion(draws, reference)
    assert np.all(z < 0.2), dict(zip(flat_names, z.round(3), strict=True))
    assert np.all(r < 0.2), dict(zip(flat_names, r.round(3), strict=True))


def test_criterion_rejects_biased_draws(posteriordb_dir):
    flat_names, reference = load_reference_flat("kidiq-kidscore_momiq")
    reference = reference.reshape(-1, len(flat_names))
    first, second = reference[::2], reference[1::2]
    assert passes(first, second)  # draws from the reference itself pass
    sd = reference.std(0)
    assert not passes(first + 0.3 * sd, second)
    assert not passes(first.mean(0) + 0.75 * (first - first.mean(0)), second)
