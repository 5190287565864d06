"""The toolkit's own coverage driver (TARP, SBC, expected coverage) on the amortized
posterior: the shipped networks pass on 500 simulated data sets (a conjugate family and the
non-conjugate logistic regression), an under-trained one is flagged (the negative
control)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.diagnostics.coverage import coverage
from ppl.inference.amortized import GaussianMixture, family_model, get_family, load_pretrained
from ppl.inference.amortized.train import train


def _model():
    prior = GaussianMixture.from_weights(jnp.array([0.5, 0.5]),
                                         jnp.array([[-2.0, 0.0], [2.0, 1.0]]), jnp.ones((2, 2)))
    return family_model("gaussian_mean_2d", prior, np.zeros((8, 2)))


def _verdicts(amortizer):
    run = coverage(_model(), "distribution_transformer", num_sims=500, key=0,
                   amortizer=amortizer, num_samples=200, progress_bar=False)
    return run.verdicts


@pytest.mark.slow
def test_shipped_network_is_calibrated_and_an_undertrained_one_is_flagged():
    assert _verdicts(load_pretrained("gaussian_mean_2d")) == {
        "tarp": True, "sbc": True, "coverage": True}
    weak = train(get_family("gaussian_mean_2d"), key=0, steps=150, batch_size=64,
                 architecture={"width": 16, "depth": 1, "mlp_width": 32, "num_heads": 2},
                 progress_bar=False)
    assert _verdicts(weak) == {"tarp": False, "sbc": False, "coverage": False}


@pytest.mark.slow
def test_shipped_logistic_network_is_calibrated():
    family = get_family("logistic_regression")
    prior = GaussianMixture.from_weights(jnp.array([0.6, 0.4]),
                                         jnp.array([[-1.0, 1.0, 0.0], [1.0, -0.5, 0.5]]),
                                         jnp.full((2, 3), 0.8))
    _, _, rows, _ = family.sample_example(jax.random.key(0))
    model = family_model(family, prior, np.asarray(rows)[:20])
    run = coverage(model, "distribution_transformer", num_sims=500, key=1,
                   amortizer=load_pretrained("logistic_regression"), num_samples=200,
                   progress_bar=False)
    assert run.verdicts == {"tarp": True, "sbc": True, "coverage": True}
