"""One process of the distributed tests: NUTS and tempered SMC through ``ppl.infer``.

Run as a script (``python _worker.py OUT.npz [--chains 16 14] [--x64] [--coordinator
127.0.0.1:PORT --num-processes P --process-id I]``); with ``--coordinator`` it joins a
``jax.distributed`` job first (gloo CPU collectives), as one host of a cluster would.
"""

from __future__ import annotations

import argparse
import warnings

import jax


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--chains", type=int, nargs="*", default=[16])
    parser.add_argument("--smc", action="store_true")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--coordinator")
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--process-id", type=int, default=0)
    args = parser.parse_args()
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)
    import jax.numpy as jnp
    import numpy as np

    import ppl

    scale = jnp.array([1.0, 2.0])
    shift = jnp.array([1.0, -2.0])
    model = ppl.from_logdensity(
        lambda x: -0.5 * jnp.sum(((x - shift) / scale) ** 2), jnp.zeros(2),
        log_prior_fn=lambda x: -0.5 * jnp.sum(x**2) / 9.0,
        sample_prior_fn=lambda key, n: 3.0 * jax.random.normal(key, (n, 2)),
    )
    out = {"device_count": jax.device_count(), "process_count": jax.process_count()}
    for chains in args.chains:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            post = ppl.infer(model, "nuts", key=0, num_chains=chains, num_warmup=100,
                             num_samples=100, progress_bar=False, warn=False)
        out[f"nuts_{chains}"] = post.samples["x"]
        out[f"nuts_{chains}_devices"] = post.meta["num_devices"]
        out[f"nuts_{chains}_padding_warning"] = any(
            "padding copy" in str(w.message) for w in caught)
    if args.smc:
        post = ppl.infer(model, "smc", key=0, num_particles=256, kernel="rw",
                         progress_bar=False)
        out["smc"] = post.samples["x"]
        out["smc_log_evidence"] = post.log_evidence
        out["smc_devices"] = post.meta["num_devices"]
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
