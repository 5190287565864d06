"""The ``ppl`` command line: ``demo``, ``run``, ``engines``, ``models``, ``coverage``, ``lm``.

Subcommands owned by other packages are attached through ``add_parser(subparsers)`` /
``run(args)`` hooks, imported lazily so that ``ppl --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["main", "resolve_model"]

# name -> module providing add_parser(subparsers) and run(args)
_PLUGINS = {
    "coverage": "ppl.diagnostics.coverage_cli",
    "amortize": "ppl.inference.amortized.cli",
    "anesi": "ppl.inference.amortized.anesi.cli",
}
# ``ppl lm`` gathers the commands of the language-model testbed and of the algorithms, which
# do not import each other: module -> its add_commands(lm_subparsers).
_LM_COMMANDS = ("ppl.models.lm.cli", "ppl.lm_cli")


def resolve_model(spec: str):
    """A Model from a zoo name (``eight_schools``) or ``module:function``: a function that
    returns a ppl Model, or a NumPyro model function that needs no arguments."""
    import ppl
    from ppl import models

    if ":" not in spec:
        return models.get(spec).build()
    module_name, function_name = spec.split(":", 1)
    sys.path.insert(0, str(Path.cwd()))
    try:
        fn = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"Expected MODEL as an importable 'module:function', got {spec!r} ({error})."
        ) from error
    try:
        built = fn()
    except Exception:  # a NumPyro model samples outside a handler
        built = None
    if isinstance(built, ppl.AbstractModel):
        return built
    return ppl.from_numpyro(fn)


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"Expected setting as key=value, got {pair!r}.")
        k, v = pair.split("=", 1)
        out[k.replace("-", "_")] = _parse_value(v)
    return out


def _cmd_demo(args) -> int:
    from ppl.diagnostics.demo import run_demo

    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, engines=not args.nuts_only)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_run(args) -> int:
    import jax

    import ppl

    # Check --out before sampling: a run should not fail at its last step.
    save_path = _checked_out(Path(args.out), args.overwrite) if args.out else None
    model = resolve_model(args.model)
    settings = _settings(args.set)
    if args.method == "particle_filter":
        settings.update(_state_space_inputs(args.model))
    if args.checkpoint:
        if args.method not in ("nuts", "hmc", "smc"):
            raise SystemExit(f"--checkpoint works with --method nuts, hmc or smc, got "
                             f"{args.method!r}.")
        settings["checkpoint_dir"] = args.checkpoint
    post = ppl.infer(model, args.method, key=jax.random.key(args.seed), **settings)
    print(post)
    print(post.summary().to_string(max_rows=60))
    if post.log_evidence is not None:
        print(f"log evidence: {post.log_evidence:.4f}")
    if save_path is not None:
        post.save(save_path, overwrite=args.overwrite)
        print(f"saved {save_path}")
    return 0


def _checked_out(out: Path, overwrite: bool) -> Path:
    """``out/posterior.nc``, once ``out`` exists and takes a file (and it may be replaced)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".ppl-write-check-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"Cannot save to --out {out}: {error.strerror or error}. Choose a writable "
            "directory."
        ) from error
    path = out / "posterior.nc"
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
    return path


def _state_space_inputs(spec: str) -> dict:
    """The state-space form and observations of a zoo model, for the particle filter."""
    from ppl import models

    entry = models.get(spec) if ":" not in spec else None
    if entry is None or entry.state_space_fn is None:
        state_space_models = ", ".join(models.names("state_space"))
        raise SystemExit(
            f"The particle filter needs a state-space model; {spec!r} has no state-space "
            f"form. Zoo models that have one: {state_space_models}."
        )
    return {"state_space": entry.state_space_fn(), "observations": entry.data()["y"]}


def _cmd_engines(args) -> int:
    import ppl

    for name, spec in sorted(ppl.available_engines().items()):
        print(f"{name:12s} {spec.description}")
    return 0


def _cmd_models(args) -> int:
    from ppl import models

    names = models.names(args.tag)
    if not names:
        tags = sorted({tag for name in models.names() for tag in models.get(name).tags})
        print(f"ppl: error: no model has the tag {args.tag!r}. Known tags: {', '.join(tags)}.",
              file=sys.stderr)
        return 2
    for name in names:
        entry = models.get(name)
        print(f"{name:50s} {entry.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="fit the built-in models and write a report")
    demo.add_argument("--out", default="reports/demo", help="report directory")
    demo.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--nuts-only", action="store_true", help="skip the other engines")
    demo.set_defaults(func=_cmd_demo)

    run = sub.add_parser("run", help="run one engine on one model")
    run.add_argument("model", help="zoo name (see `ppl models`) or module:function")
    run.add_argument("--method", default="nuts", help="engine (see `ppl engines`)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="engine settings, e.g. --set num_samples=500 num_chains=2")
    run.add_argument("--out", help="directory to save posterior.nc in")
    run.add_argument("--overwrite", action="store_true", help="replace an existing posterior.nc")
    run.add_argument("--checkpoint", metavar="DIR",
                     help="record the run in DIR as it goes; run again to resume (nuts, hmc, smc)")
    run.set_defaults(func=_cmd_run)

    engines = sub.add_parser("engines", help="list the inference engines")
    engines.set_defaults(func=_cmd_engines)
    zoo = sub.add_parser("models", help="list the zoo models")
    zoo.add_argument("--tag", help="only models with this tag")
    zoo.set_defaults(func=_cmd_models)

    for module_name in _PLUGINS.values():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        plugin = module.add_parser(sub)
        plugin.set_defaults(func=module.run)
    lm = sub.add_parser("lm", help="language models in JAX, the reasoning testbed and "
                                   "inference-time scaling (sample, solve, scaling)")
    lm_commands = lm.add_subparsers(dest="lm_command", required=True)
    for module_name in _LM_COMMANDS:
        importlib.import_module(module_name).add_commands(lm_commands)
    return parser


# Errors of the user's input (a bad setting, model name, path): their messages say what to
# change, and a traceback only hides them. Other exceptions keep theirs.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _USER_ERRORS as error:
        if os.environ.get("PPL_DEBUG", "") not in ("", "0"):
            raise  # PPL_DEBUG=1: the traceback, for a bug report
        print(f"ppl: error: {error or type(error).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
