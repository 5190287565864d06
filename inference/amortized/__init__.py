"""Amortized engines (installed as ``ppl.inference.amortized``).

Distribution transformers (Whittle et al. 2025): a network trained once on simulations from
a model family maps (Gaussian-mixture prior, data set) to a Gaussian-mixture posterior in
well under a millisecond, for any prior of the family's hyper-distribution, without
retraining; a posterior can be fed back as the next prior (sequential inference).

- :mod:`.gmm`: :class:`GaussianMixture`, exact conjugate posteriors of mixture priors,
  Monte Carlo KL.
- :mod:`.families`: model families (hyper-distribution over priors, simulator, exact
  posterior), registered by name.
- :mod:`.transformer`: the architecture.
- :mod:`.train`: ``train.train(family, key=..., steps=...)``, :class:`Amortizer`
  (``posterior``, ``check_prior``, ``save``, ``load``), :func:`load_pretrained`. (The
  function ``train`` is not re-exported here: ``ppl.inference.amortized.train`` stays the
  module.)
- :mod:`.engine`: :func:`family_model` (a family's posterior as a ppl Model) and
  ``ppl.infer(model, "distribution_transformer", amortizer=...)``.
- :mod:`.evaluate`: accuracy against exact posteriors; :mod:`.train_family`: the script
  that trains and measures the shipped checkpoints.

Example:
    >>> import jax.numpy as jnp
    >>> from ppl.inference.amortized import GaussianMixture, load_pretrained
    >>> amortizer = load_pretrained("gaussian_mean_2d")
    >>> prior = GaussianMixture.from_weights(jnp.array([0.5, 0.5]),
    ...                                      jnp.array([[-2.0, 0.0], [2.0, 1.0]]),
    ...                                      jnp.ones((2, 2)))
    >>> posterior = amortizer.posterior(jnp.array([[1.8, 0.9], [2.4, 1.2]]), None, prior)
    >>> posterior.batch_shape, posterior.num_components
    ((), 2)
"""

from .engine import family_model
from .families import (
    AbstractFamily,
    GaussianMeanFamily,
    LinearRegressionFamily,
    LogisticRegressionFamily,
    MixtureHyperprior,
    family_names,
    get_family,
    register_family,
)
from .gmm import (
    ConjugatePosterior,
    GaussianMixture,
    KLEstimate,
    gaussian_mean_posterior,
    kl_divergence,
    linear_gaussian_posterior,
    linear_regression_posterior,
    multiply_gaussian_site,
    stack_mixtures,
)
from .train import (
    Amortizer,
    PriorOutsideTrainingWarning,
    TrainingSettings,
    checkpoint_path,
    load_pretrained,
)
from .transformer import DistributionTransformer, TransformerConfig

__all__ = [
    "AbstractFamily", "GaussianMeanFamily", "LinearRegressionFamily", "LogisticRegressionFamily",
    "MixtureHyperprior",
    "family_names", "get_family", "register_family",
    "ConjugatePosterior", "GaussianMixture", "KLEstimate", "gaussian_mean_posterior",
    "kl_divergence", "linear_gaussian_posterior", "linear_regression_posterior",
    "multiply_gaussian_site", "stack_mixtures",
    "Amortizer", "PriorOutsideTrainingWarning", "TrainingSettings", "checkpoint_path",
    "load_pretrained",
    "DistributionTransformer", "TransformerConfig",
    "family_model",
]
