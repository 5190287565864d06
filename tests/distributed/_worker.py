"""One process of the distributed tests: NUTS and tempered SMC through ``ppl.infer``.

With ``--particles-coverage`` it runs instead the particle VI engines (coin SVGD, SVGD)
and the vectorised coverage driver on ``devices=1`` and on every device, for
``test_particles_and_coverage.py``. With ``--particle-filter`` it runs the particle filter
on the zoo's LGSSM (64 particles) on ``devices=1`` and on every device, and the refusal of
6 particles on every device; with ``--coverage-small`` the vectorised coverage driver at
its tiniest (4 simulations, NUTS 2 x 50) on every device of every process; both for
``test_particle_filter_sharded.py``.

With ``--checkpoint DIR`` the NUTS and SMC runs record themselves in ``DIR/nuts_<chains>``
and ``DIR/smc`` (``checkpoint_dir=``); ``--stop-after K L`` interrupts NUTS right after
its K-th record and SMC after its L-th (on every process, as a kill just after a record
would); without it the worker also runs them uninterrupted without a checkpoint
(``plain_*``). The count of files this process wrote there is ``checkpoint_writes``. With
``--refuse-dir DIR`` process ``i`` runs NUTS with ``checkpoint_dir=DIR/process_<i>``
(directories that are not shared): the refusal's message is ``refusal``, and that of
another run in those directories ``refusal_other_run``; both for
``test_multi_process_checkpoint.py``.

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
    parser.add_argument("--particles-coverage", action="store_true")
    parser.add_argument("--particle-filter", action="store_true")
    parser.add_argument("--coverage-small", action="store_true")
    parser.add_argument("--x64", action="store_true")
    parser.add_argument("--checkpoint")
    parser.add_argument("--stop-after", type=int, nargs=2)
    parser.add_argument("--refuse-dir")
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
    if args.particles_coverage:
        out.update(_particles_and_coverage(model))
        np.savez(args.out, **out)
        return
    if args.particle_filter or args.coverage_small:
        out.update(_particle_filter() if args.particle_filter else _coverage_small())
        np.savez(args.out, **out)
        return
    if args.refuse_dir:
        out.update(_refusals(model, args.refuse_dir))
        np.savez(args.out, **out)
        return
    if args.checkpoint:
        out.update(_checkpointed(model, args))
        np.savez(args.out, **out)
        return
    out.update(_runs(model, args.chains, args.smc))
    np.savez(args.out, **out)


def _runs(model, chain_counts, smc: bool, prefix: str = "", checkpoint: str | None = None):
    """NUTS on each chain count and tempered SMC, their draws under ``prefix``."""
    from pathlib import Path

    import ppl

    out = {}
    for chains in chain_counts:
        where = None if checkpoint is None else Path(checkpoint) / f"nuts_{chains}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            post = ppl.infer(model, "nuts", key=0, num_chains=chains, num_warmup=100,
                             num_samples=100, progress_bar=False, warn=False,
                             checkpoint_dir=where)
        out[f"{prefix}nuts_{chains}"] = post.samples["x"]
        out[f"{prefix}nuts_{chains}_devices"] = post.meta["num_devices"]
        out[f"{prefix}nuts_{chains}_padding_warning"] = any(
            "padding copy" in str(w.message) for w in caught)
    if smc:
        where = None if checkpoint is None else Path(checkpoint) / "smc"
        post = ppl.infer(model, "smc", key=0, num_particles=256, kernel="rw",
                         progress_bar=False, checkpoint_dir=where)
        out[f"{prefix}smc"] = post.samples["x"]
        out[f"{prefix}smc_log_evidence"] = post.log_evidence
        out[f"{prefix}smc_devices"] = post.meta["num_devices"]
    return out


class _Interrupted(Exception):
    pass


def _checkpointed(model, args) -> dict:
    """The runs with ``checkpoint_dir``: stopped after ``--stop-after`` records, or run to
    the end (resuming what is there) and then again without a checkpoint."""
    from ppl.inference import checkpoint

    writes = []
    write_atomic = checkpoint._write_atomic

    def counted(path, arrays):
        writes.append(path)
        write_atomic(path, arrays)

    checkpoint._write_atomic = counted
    out = {}
    if args.stop_after is not None:
        save = checkpoint.RunCheckpoint.save

        def stop_after(records: int) -> None:
            def save_then_stop(self, index, *rest, **kwargs):
                save(self, index, *rest, **kwargs)
                if index + 1 == records:
                    raise _Interrupted

            checkpoint.RunCheckpoint.save = save_then_stop

        stop_after(args.stop_after[0])
        for chains in args.chains:
            try:
                _runs(model, [chains], False, checkpoint=args.checkpoint)
            except _Interrupted:
                out[f"nuts_{chains}_interrupted"] = True
        stop_after(args.stop_after[1])
        if args.smc:
            try:
                _runs(model, [], True, checkpoint=args.checkpoint)
            except _Interrupted:
                out["smc_interrupted"] = True
    else:
        out.update(_runs(model, args.chains, args.smc, checkpoint=args.checkpoint))
        out.update(_runs(model, args.chains, args.smc, prefix="plain_"))
    out["checkpoint_writes"] = len(writes)
    return out


def _refusals(model, directory: str) -> dict:
    """The messages refusing a checkpoint directory that each process sees differently,
    then (process 0's directory now holding a run) another run there."""
    from pathlib import Path

    import ppl

    out = {}
    for name, num_samples in (("refusal", 10), ("refusal_other_run", 20)):
        out[name] = ""
        try:
            ppl.infer(model, "nuts", key=0, num_chains=4, num_warmup=10,
                      num_samples=num_samples, progress_bar=False, warn=False,
                      checkpoint_dir=Path(directory) / f"process_{jax.process_index()}")
        except ValueError as error:
            out[name] = str(error)
    return out


def _particles_and_coverage(model) -> dict:
    """Coin SVGD and SVGD (8 particles, 50 iterations) and the coverage driver (6 simulations
    of the conjugate normal, padded to 8 over 4 devices) on one device and on all."""
    import importlib

    import ppl
    from ppl import models

    out = {}
    every = jax.device_count()
    for method in ("coin_svgd", "svgd"):
        for devices in (1, every):
            post = ppl.infer(model, method, key=0, num_particles=8, num_iterations=50,
                             progress_bar=False, devices=devices)
            out[f"{method}_{devices}"] = post.samples["x"]
            out[f"{method}_{devices}_devices"] = post.meta["num_devices"]
    try:
        ppl.infer(model, "coin_svgd", key=0, num_particles=6, num_iterations=5,
                  progress_bar=False, devices=every)
        out["refusal"] = ""
    except ValueError as error:
        out["refusal"] = str(error)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = ppl.infer(model, "coin_svgd", key=0, num_particles=6, num_iterations=5,
                         progress_bar=False)
    out["default_6_devices"] = post.meta["num_devices"]
    out["default_6_warning"] = " ".join(str(w.message) for w in caught)
    coverage = importlib.import_module("ppl.diagnostics.coverage").coverage
    for devices in (1, every):
        run = coverage(models.get("conjugate_normal").build(), "nuts", num_sims=6, key=10,
                       num_rank_draws=50, vectorized=True, num_chains=2, num_warmup=150,
                       num_samples=150, devices=devices)
        out[f"coverage_{devices}_draws"] = run.draws
        out[f"coverage_{devices}_truths"] = run.truths
    return out


def _particle_filter() -> dict:
    """The LGSSM particle filter (64 particles) on one device and on all; 6 on all."""
    from ppl.models.state_space import lgssm_state_space

    import ppl
    from ppl import models

    model, state_space = models.get("lgssm").build(), lgssm_state_space()
    out = {}
    every = jax.device_count()
    for devices in (1, every):
        post = ppl.infer(model, "particle_filter", key=0, state_space=state_space,
                         num_particles=64, num_trajectories=32, devices=devices)
        out[f"pf_{devices}_x"] = post.samples["x"]
        out[f"pf_{devices}_log_evidence"] = post.log_evidence
        out[f"pf_{devices}_devices"] = post.meta["num_devices"]
        for name, value in post.history.items():
            out[f"pf_{devices}_history_{name}"] = value
    try:
        ppl.infer(model, "particle_filter", key=0, state_space=state_space, num_particles=6,
                  num_trajectories=4, devices=every)
        out["pf_refusal"] = ""
    except ValueError as error:
        out["pf_refusal"] = str(error)
    return out


def _coverage_small() -> dict:
    """The vectorised coverage driver at its tiniest, on every device of every process."""
    import importlib

    from ppl import models

    coverage = importlib.import_module("ppl.diagnostics.coverage").coverage
    run = coverage(models.get("conjugate_normal").build(), "nuts", num_sims=4, key=10,
                   num_rank_draws=50, vectorized=True, num_chains=2, num_warmup=50,
                   num_samples=50)
    out = {"coverage_draws": run.draws, "coverage_truths": run.truths}
    if run.log_likelihood_draws is not None:
        out["coverage_log_likelihood_draws"] = run.log_likelihood_draws
    return out


if __name__ == "__main__":
    main()
