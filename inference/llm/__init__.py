"""Inference-time scaling of language models on the SMC core (installed as ``ppl.inference.llm``).

Particles are partial reasoning traces, the language model proposes each next step, a
process reward model weighs it, and resampling keeps the promising traces (Puri et al.
2025). Every method runs on the same Feynman-Kac step (:mod:`.population`) and the SMC
core's resamplers, reached by name through :func:`run`:

    result = ppl.inference.llm.run("particle_filter", lm, tokenizer, prompts,
                                   key=jax.random.key(0), reward=prm, num_particles=16)

Methods: ``best_of_n``, ``weighted_best_of_n``, ``self_consistency``, ``beam_search``,
``particle_filter``, ``entropic_particle_filter``, ``particle_gibbs`` (:data:`METHODS`).
"""

from ppl.inference.llm.api import METHODS, LMResult, MethodSpec, read_problems, run, write_results
from ppl.inference.llm.population import TRACE_COUNTS

__all__ = ["METHODS", "LMResult", "MethodSpec", "TRACE_COUNTS", "read_problems", "run",
           "write_results"]
