"""NUTS and HMC: init/step pairs over a Model, windowed adaptation, and the driver."""

from ppl.inference.mcmc.adaptation import WindowAdaptationState, window_adaptation
from ppl.inference.mcmc.kernels import hmc, nuts
from ppl.inference.mcmc.sampler import find_initial_positions, sample

__all__ = [
    "WindowAdaptationState", "find_initial_positions", "hmc", "nuts", "sample", "window_adaptation",
]
