"""One process of the LLM-particle tests: ``ppl.inference.llm.run`` on the reasoning testbed
on ``devices=1`` and on every device, for ``test_llm_particles_sharded.py``.

Six problems at 4 operations, 4 particles each, batches of 4 problems (so 2 batches, the
last padded): the particle filter with the oracle in JAX (every step resamples or not by
its ESS), the same with a host reward, the entropic filter with look-ahead, particle Gibbs
and best-of-N (``--runs`` picks some). Every array of each result is saved as
``<run>_<devices>_<field>``; the
refusal of ``power_sampling`` on several devices as ``power_refusal``, the warning that one
problem on every device gives as ``padding_warning``.

Run as a script (``python _llm_worker.py OUT.npz [--coordinator 127.0.0.1:PORT
--num-processes P --process-id I]``); with ``--coordinator`` it joins a ``jax.distributed``
job first (gloo CPU collectives) and runs on every device of every process only.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import jax

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "lm" / "checkpoints" / "arith"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--runs", nargs="*", default=["pf", "host", "epf", "gibbs", "bon"])
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args()
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    import numpy as np
    from ppl.inference import llm
    from ppl.models import lm
    from ppl.models.lm.testbed import prm, tasks

    from ppl.reward_model import HostReward

    model, tokenizer = lm.load(CHECKPOINT), lm.load_tokenizer(CHECKPOINT)
    rng = np.random.default_rng(11)
    problems = [tasks.generate(rng, 4) for _ in range(6)]
    prompts = [p.prompt for p in problems]
    by_prompt = {p.prompt: p for p in problems}

    def check(batch_prompts, traces):
        labels = [tasks.step_labels(by_prompt[p], t) for p, t in zip(batch_prompts, traces,
                                                                     strict=True)]
        return [float(lab[-1]) if lab else 1.0 for lab in labels]

    runs = {
        "pf": ("particle_filter", prm.OracleReward(), {}),
        "host": ("particle_filter", HostReward(check, name="oracle"), {}),
        "epf": ("entropic_particle_filter", prm.OracleReward(), {"lookahead_tokens": 4}),
        "gibbs": ("particle_gibbs", prm.OracleReward(), {"num_iterations": 2}),
        "bon": ("best_of_n", prm.OracleReward(), {}),
    }
    device_counts = [None] if args.coordinator else [1, None]
    out = {"device_count": jax.device_count(), "process_count": jax.process_count()}
    for name in args.runs:
        method, reward, settings = runs[name]
        for devices in device_counts:
            result = llm.run(method, model, tokenizer, prompts, key=jax.random.key(4),
                             reward=reward, num_particles=4, batch_size=16,
                             answer_fn=tasks.parse_answer, devices=devices, **settings)
            tag = f"{name}_{1 if devices == 1 else 'all'}"
            out[f"{tag}_devices"] = result.settings["devices"]
            out[f"{tag}_candidates"] = np.array(result.candidates)
            out[f"{tag}_weights"] = result.weights
            out[f"{tag}_tokens"] = result.tokens
            out[f"{tag}_reward_calls"] = result.reward_calls
            out[f"{tag}_forward_passes"] = result.forward_passes
            out[f"{tag}_seconds"] = result.wall_time
            if result.log_evidence is not None:
                out[f"{tag}_log_evidence"] = result.log_evidence
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm.run("self_consistency", model, tokenizer, prompts[:1], key=0, num_particles=2)
    out["padding_warning"] = "; ".join(str(w.message) for w in caught)
    try:
        llm.run("power_sampling", model, tokenizer, prompts[:1], key=0, devices=jax.device_count())
        out["power_refusal"] = "none"
    except ValueError as error:
        out["power_refusal"] = str(error)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
