"""One table of bad inputs, crossed with every engine reached through ``ppl.infer`` (issue 17).

Optax's one-contract-over-a-table pattern: each row of ``TABLE`` builds one bad input (a
discrete latent, NaN or inf in the data, data of the wrong shape, a log-density that is NaN
or -inf everywhere, a model with no latents, a count that is zero, negative or not an integer,
a key that is an int (accepted) or not an integer (refused), an unknown setting, a save to an
unwritable path, a load of a truncated or foreign file, the command line with a missing model,
bad flags or an unwritable ``--out``) and says what every engine must do with it: raise one
type of error whose message names the problem (the site, setting or path) and the remedy, from
ppl's own code (never a traceback from inside JAX or h5py), or, where an engine documents that
it accepts the input, the documented behaviour, with the reason in the row. Rows that cannot
apply to an engine say why in ``NOT_APPLICABLE``.

The observed-data shapes and dtypes are checked property-style by a seeded loop (hypothesis
is not a dependency of the project).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from ppl import cli
from ppl.model import LogDensityModel

REPO = Path(ppl.__file__).resolve().parents[1]

# Small settings per engine (as tests/contract/test_engines.py): enough to run, not to be right.
SETTINGS = {
    "nuts": dict(num_chains=2, num_warmup=20, num_samples=10, progress_bar=False, warn=False),
    "hmc": dict(num_chains=2, num_warmup=20, num_samples=10, progress_bar=False, warn=False),
    "smc": dict(num_particles=64, kernel="rw", max_mcmc_steps=3, progress_bar=False),
    "flow_vi": dict(num_steps=20, num_draws=20, progress_bar=False, warn=False),
    "coin_svgd": dict(num_particles=8, num_iterations=5, progress_bar=False),
    "coin_ksdd": dict(num_particles=8, num_iterations=5, progress_bar=False),
    "svgd": dict(num_particles=8, num_iterations=5, step_size=0.1, progress_bar=False),
    "particle_filter": dict(num_particles=64, num_trajectories=8),
    "distribution_transformer": dict(),
}
ENGINES = sorted(SETTINGS)

# The count settings of each engine: zero, negative and non-integers are refused by name.
COUNTS = {
    "nuts": ["num_samples", "num_chains", "thinning"],
    "hmc": ["num_samples", "num_chains"],
    "smc": ["num_particles"],
    "particle_filter": ["num_particles", "num_trajectories"],
    "flow_vi": ["num_steps", "num_draws"],
    "coin_svgd": ["num_particles", "num_iterations"],
    "coin_ksdd": ["num_particles", "num_iterations"],
    "svgd": ["num_particles", "num_iterations"],
    "distribution_transformer": ["num_samples"],
}

# Engines that take a state-space form or a trained network rather than an ordinary model:
# rows about the model itself do not apply to them (their own forms of the bad input are
# tested where noted, or in the row itself for the particle filter's observations).
_STATE_SPACE = ("the particle filter runs a state-space form (state_space=, observations=), "
                "not the model's log-density")
_AMORTIZED = "needs a family_model and a trained amortizer; tests/inference/amortized/"
NOT_APPLICABLE = {
    "particle_filter": {
        "model": _STATE_SPACE,
    },
    "distribution_transformer": {
        "model": _AMORTIZED,
        "count": "the count is checked after the amortizer is loaded; " + _AMORTIZED,
        "posterior": _AMORTIZED,
    },
}


def test_every_registered_engine_is_in_the_table():
    assert set(ppl.available_engines()) == set(SETTINGS) == set(COUNTS)


# -- expectations -------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Raises:
    """The run raises ``type`` (from ppl's code) with a message matching ``match``."""

    type: type[BaseException]
    match: str


@dataclasses.dataclass(frozen=True)
class Exits:
    """The command line exits with ``code``, printing a line matching ``match``, no traceback."""

    code: int
    match: str


@dataclasses.dataclass(frozen=True)
class Accepts:
    """Documented behaviour: the run succeeds and ``check(result)`` holds."""

    check: Callable[[Any], None]
    reason: str


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: ``run(engine, ctx)`` feeds the bad input to ``engine``; ``expect`` (or
    ``expect(engine)``) says what must happen; ``needs`` names the engine's capability
    (a key of ``NOT_APPLICABLE``) the row requires."""

    id: str
    run: Callable[[str, Any], Any]
    expect: Raises | Exits | Accepts | Callable[[str], Raises | Exits | Accepts]
    needs: str | None = None


# -- models -------------------------------------------------------------------------------
N = 30
X = np.linspace(-1.0, 1.0, N).astype(np.float32)
Y = (0.5 + 2.0 * X + 0.3 * np.random.default_rng(0).normal(size=N)).astype(np.float32)


def regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    b = numpyro.sample("b", dist.Normal(0.0, 2.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, 0.3), obs=y)


def discrete_regression(x, y=None):
    k = numpyro.sample("k", dist.Bernoulli(0.5))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(k * x, 1.0), obs=y)


def no_latents(x, y=None):
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y)


def _logdensity_model(fn, data=None):
    """A 2-d model with a proper prior (and a prior sampler, for SMC)."""
    def prior(x, *data):
        return -0.5 * jnp.sum(x**2)

    return ppl.from_logdensity(fn, jnp.zeros(2), data=data, log_prior_fn=prior,
                               sample_prior_fn=lambda k, n: jax.random.normal(k, (n, 2)))


class DiscreteSiteModel(LogDensityModel):
    """A model whose site 'k' is discrete (what a discrete-aware Model view reports)."""

    @property
    def discrete_sites(self):
        return ("k",)


def _discrete_site_model():
    base = _logdensity_model(lambda x: -0.5 * jnp.sum(x**2))
    return DiscreteSiteModel(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


@functools.cache
def _lgssm():
    from ppl import models

    entry = models.get("lgssm")
    return entry.build(), entry.state_space_fn(), np.asarray(entry.data()["y"])


def good_run(engine: str):
    """``(model, settings)``: a run of ``engine`` that works."""
    if engine == "particle_filter":
        model, state_space, y = _lgssm()
        return model, dict(SETTINGS[engine], state_space=state_space, observations=y)
    return ppl.from_numpyro(regression, X, Y), dict(SETTINGS[engine])


def infer(engine, model=None, key=0, **changes):
    base_model, settings = good_run(engine)
    return ppl.infer(base_model if model is None else model, engine, key=key,
                     **{**settings, **changes})


@functools.cache
def posterior(engine):
    """One posterior per engine, from an int seed (the ``key_int`` row checks it)."""
    return infer(engine, key=3)


# -- rows ---------------------------------------------------------------------------------
def _with_bad_value(value, where=3):
    y = Y.astype(np.float64).copy()
    y[where] = value
    return y


def _data_row(value):
    def run(engine, ctx):
        if engine == "particle_filter":  # its data are the observations
            observations = _lgssm()[2].astype(np.float64)
            observations[3] = value
            return infer(engine, observations=observations)
        return infer(engine, ppl.from_numpyro(regression, X, _with_bad_value(value)))

    return run


def _expect_data(engine):
    if engine == "particle_filter":
        return Raises(ValueError, r"Expected finite observations, got 1 NaN/inf value\(s\); "
                                  r"mask missing observations")
    return Raises(ValueError, r"Observed data for site 'y' contains 1 non-finite value\(s\) "
                              r"\(NaN or inf\)\. Remove or impute them")


def _count_row(bad):
    def run(engine, ctx):
        errors = []
        for name in COUNTS[engine]:
            try:
                infer(engine, **{name: bad})
            except ValueError as error:
                _assert_from_ppl(error)
                errors.append(str(error))
            else:
                errors.append(f"{name}={bad!r} accepted")
        raise ValueError(" | ".join(errors))

    def expect(engine):
        one = r"Expected {} to be an integer >= \d+, got {}\."
        return Raises(ValueError, r" \| ".join(one.format(name, re.escape(repr(bad)))
                                               for name in COUNTS[engine]) + "$")

    return run, expect


def _typo(engine):
    return COUNTS[engine][0][:-1]  # num_samples -> num_sample


def _finite_draws(post):
    site = sorted(post.samples)[0]
    assert np.all(np.isfinite(post.samples[site]))


def _key_int_run(engine, ctx):
    by_int = posterior(engine)
    by_key = infer(engine, key=jax.random.key(3))
    for name in by_int.samples:
        np.testing.assert_array_equal(by_int.samples[name], by_key.samples[name])
    return by_int


def _saved(engine, ctx):
    path = ctx.tmp_path / f"{engine}.nc"
    posterior(engine).save(path)
    return path


def _round_trip(engine, ctx):
    loaded = ppl.load(_saved(engine, ctx))
    for name, value in posterior(engine).samples.items():
        np.testing.assert_allclose(loaded.samples[name], value, rtol=1e-6)
    return loaded


def _load_truncated(engine, ctx):
    path = _saved(engine, ctx)
    truncated = ctx.tmp_path / "truncated.nc"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ppl.load(truncated)


def _load_foreign_netcdf(engine, ctx):
    import xarray as xr

    path = ctx.tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")
    return ppl.load(path)


def _load_foreign_npy(engine, ctx):
    path = ctx.tmp_path / "foreign.nc"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(3))
    return ppl.load(path)


def _blocker(ctx):
    blocker = ctx.tmp_path / "a_file"
    blocker.write_text("")
    return blocker


def _cli_model(engine):
    return "lgssm" if engine == "particle_filter" else "conjugate_normal"


def _cli(*argv):
    def run(engine, ctx):
        args = [a.format(model=_cli_model(engine), blocker=_blocker(ctx), tmp=ctx.tmp_path)
                for a in argv]
        args = [args[0], *args[1:2], "--method", engine, *args[2:]]
        ctx.capsys.readouterr()
        try:
            code = cli.main(args)
        except SystemExit as error:
            code = error.code if isinstance(error.code, int) else 1
            if not isinstance(error.code, int):  # what Python prints for SystemExit(message)
                print(error.code, file=sys.stderr)
        captured = ctx.capsys.readouterr()
        return code, captured.out + captured.err

    return run


NAN_EVERYWHERE = r"(log-density|log-likelihood).*NaN"
NEGINF_EVERYWHERE = r"(log-density|log-likelihood).*-inf.* at all \d+"
KEY_REFUSED = r"Expected key to be a JAX PRNG key \(jax.random.key\(0\)\) or an int seed, got "

TABLE = [
    # The model.
    Case("discrete_latent_numpyro",
         lambda e, c: infer(e, ppl.from_numpyro(discrete_regression, X, Y)),
         Raises(ValueError, r"Latent site 'k' is discrete \(Bernoulli.*Marginalise it out"),
         needs="model"),
    Case("discrete_site_in_the_model_view",
         lambda e, c: infer(e, _discrete_site_model()),
         Raises(ValueError, r"continuous latents; (got )?discrete site\(s\) \['k'\]: "
                            r"marginalise them out"),
         needs="model"),
    Case("nan_in_observed_data", _data_row(np.nan), _expect_data),
    Case("inf_in_observed_data", _data_row(np.inf), _expect_data),
    Case("nan_in_logdensity_data",
         lambda e, c: infer(e, _logdensity_model(lambda x, d: -jnp.sum((x - d["y"]) ** 2),
                                                 {"y": jnp.array([1.0, jnp.nan])})),
         Raises(ValueError, r"site 'data\['y'\]' contains 1 non-finite value"),
         needs="model"),
    Case("observed_data_of_the_wrong_length",
         lambda e, c: infer(e, ppl.from_numpyro(regression, X, Y[:29])),
         Raises(ValueError, r"Observed site 'y' expects data of shape \(30,\).*got shape "
                            r"\(29,\): the shapes do not broadcast\. Pass data of shape"),
         needs="model"),
    Case("observed_data_with_a_trailing_axis",
         lambda e, c: infer(e, ppl.from_numpyro(regression, X, Y[:, None])),
         Raises(ValueError, r"'y' expects data of shape \(30,\).*\(30, 1\).*900 likelihood "
                            r"terms.*squeeze\(-1\)"),
         needs="model"),
    Case("with_data_of_the_wrong_shape",
         lambda e, c: infer(e, ppl.from_numpyro(regression, X, Y).with_data({"y": Y[:1]})),
         Raises(ValueError, r"'y' expects data of shape \(30,\).*got shape \(1,\): "
                            r"broadcasting would make 30 likelihood terms from 1"),
         needs="model"),
    Case("logdensity_nan_everywhere",
         lambda e, c: infer(e, _logdensity_model(lambda x: jnp.nan * jnp.sum(x))),
         Raises(ValueError, NAN_EVERYWHERE), needs="model"),
    Case("logdensity_neginf_everywhere",
         lambda e, c: infer(e, _logdensity_model(lambda x: -jnp.inf + 0.0 * jnp.sum(x))),
         Raises(ValueError, NEGINF_EVERYWHERE), needs="model"),
    Case("no_latent_sites_numpyro",
         lambda e, c: infer(e, ppl.from_numpyro(no_latents, X, Y)),
         Raises(ValueError, r"'no_latents' has no latent sample sites.*Add a latent site"),
         needs="model"),
    Case("no_latent_sites_logdensity",
         lambda e, c: infer(e, ppl.from_logdensity(lambda p: 0.0, {})),
         Raises(ValueError, r"no array leaves: the model has no latent parameters"),
         needs="model"),
    # The counts.
    Case("count_zero", *_count_row(0), needs="count"),
    Case("count_negative", *_count_row(-1), needs="count"),
    Case("count_not_an_integer", *_count_row(2.5), needs="count"),
    Case("count_an_integral_float", *_count_row(3.0), needs="count"),
    Case("count_none", *_count_row(None), needs="count"),
    Case("count_a_string", *_count_row("3"), needs="count"),
    # The key.
    Case("key_int", _key_int_run,
         Accepts(_finite_draws,
                 "documented: an int seed is jax.random.key(seed), the same draws"),
         needs="posterior"),
    Case("key_float", lambda e, c: infer(e, key=1.5), Raises(ValueError, KEY_REFUSED + "1.5")),
    Case("key_float_array", lambda e, c: infer(e, key=jnp.zeros(2)),
         Raises(ValueError, KEY_REFUSED + "Array")),
    Case("key_bool", lambda e, c: infer(e, key=True), Raises(ValueError, KEY_REFUSED + "True")),
    Case("key_string", lambda e, c: infer(e, key="0"), Raises(ValueError, KEY_REFUSED + "'0'")),
    # The settings.
    Case("unknown_setting_with_a_close_match",
         lambda e, c: infer(e, **{_typo(e): 10}),
         lambda e: Raises(TypeError, rf"Unknown setting\(s\) for method '{e}': '{_typo(e)}' "
                                     rf"\(did you mean '{COUNTS[e][0]}'.*Its settings are: ")),
    Case("unknown_setting_without_a_close_match",
         lambda e, c: infer(e, zzz_unheard_of=1),
         lambda e: Raises(TypeError, rf"for method '{e}': 'zzz_unheard_of'\. Its settings are: "
                                     rf".*{COUNTS[e][0]}")),
    # Save and load.
    Case("save_then_load", _round_trip,
         Accepts(lambda post: None, "documented: ppl.load reads what Posterior.save wrote"),
         needs="posterior"),
    Case("save_under_a_file",
         lambda e, c: posterior(e).save(_blocker(c) / "posterior.nc"),
         Raises(PermissionError, r"Cannot save to .*a_file/posterior.nc: its directory .*a_file "
                                 r"is not a directory"),
         needs="posterior"),
    Case("save_in_a_missing_directory",
         lambda e, c: posterior(e).save(c.tmp_path / "missing" / "posterior.nc"),
         Raises(PermissionError, r"its directory .*missing does not exist\. Create the "
                                 r"directory first"),
         needs="posterior"),
    Case("save_to_a_directory", lambda e, c: posterior(e).save(c.tmp_path),
         Raises(IsADirectoryError, r"it is a directory; pass a file path such as .*posterior.nc"),
         needs="posterior"),
    Case("save_over_a_file", lambda e, c: posterior(e).save(_blocker(c)),
         Raises(FileExistsError, r"a_file exists; pass overwrite=True"), needs="posterior"),
    Case("load_a_truncated_file", _load_truncated,
         Raises(ValueError, r"Could not read .*truncated.nc: not a netCDF-4 file, or truncated"),
         needs="posterior"),
    Case("load_a_foreign_netcdf_file", _load_foreign_netcdf,
         Raises(ValueError, r"foreign.nc was not written by ppl.*no 'posterior' group")),
    Case("load_a_foreign_binary_file", _load_foreign_npy,
         Raises(ValueError, r"Could not read .*foreign.nc: not a netCDF-4 file")),
    Case("load_a_missing_file", lambda e, c: ppl.load(c.tmp_path / "missing.nc"),
         Raises(FileNotFoundError, r"No file .*missing.nc to load")),
    # The command line (``ppl run MODEL --method ENGINE ...``).
    Case("cli_missing_model", _cli("run"),
         Exits(2, r"the following arguments are required: model")),
    Case("cli_unknown_model", _cli("run", "no_such_model"),
         Exits(2, r"ppl: error: Unknown model 'no_such_model'")),
    Case("cli_model_not_importable", _cli("run", "no_such_module:fn"),
         Exits(2, r"ppl: error: Expected MODEL as an importable 'module:function', got "
                  r"'no_such_module:fn'")),
    Case("cli_bad_flag", _cli("run", "{model}", "--bogus"),
         Exits(2, r"unrecognized arguments: --bogus")),
    Case("cli_bad_seed", _cli("run", "{model}", "--seed", "1.5"),
         Exits(2, r"argument --seed: invalid int value: '1.5'")),
    Case("cli_setting_without_a_value", _cli("run", "{model}", "--set", "num_samples"),
         Exits(1, r"Expected setting as key=value, got 'num_samples'")),
    Case("cli_unknown_setting", _cli("run", "{model}", "--set", "zzz_unheard_of=3"),
         Exits(2, r"ppl: error: Unknown setting\(s\) for method .*'zzz_unheard_of'")),
    Case("cli_unwritable_out", _cli("run", "{model}", "--out", "{blocker}/sub"),
         Exits(2, r"ppl: error: Cannot save to --out .*a_file/sub: Not a directory\. Choose a "
                  r"writable directory")),
]


# -- the contract -------------------------------------------------------------------------
def _assert_from_ppl(error: BaseException) -> None:
    """The error was raised by ppl's code, not from inside JAX (or h5py, numpyro, ...)."""
    frames = traceback.extract_tb(error.__traceback__)
    last = Path(frames[-1].filename).resolve()
    assert REPO in last.parents and ".venv" not in last.parts, (
        f"{type(error).__name__} raised from {last}:{frames[-1].lineno}, not by ppl: {error}")


@dataclasses.dataclass
class _Context:
    tmp_path: Path
    capsys: Any


def _applies(case: Case, engine: str) -> str | None:
    if case.needs is None:
        return None
    return NOT_APPLICABLE.get(engine, {}).get(case.needs)


# The pairs that do not apply (NOT_APPLICABLE says why) are left out, not skipped: 32 skip
# lines would bury the suite's real skips.
PAIRS = [pytest.param(case, engine, id=f"{case.id}-{engine}")
         for engine in ENGINES for case in TABLE if _applies(case, engine) is None]


def test_every_engine_meets_most_of_the_table():
    for engine in ENGINES:
        assert sum(e == engine for _, e in (p.values for p in PAIRS)) >= len(TABLE) // 4, engine


@pytest.mark.parametrize(("case", "engine"), PAIRS)
def test_bad_input(case, engine, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PPL_DEBUG", raising=False)
    expect = case.expect(engine) if callable(case.expect) else case.expect
    ctx = _Context(tmp_path, capsys)
    if isinstance(expect, Raises):
        with pytest.raises(expect.type, match=expect.match) as info:
            case.run(engine, ctx)
        _assert_from_ppl(info.value)
    elif isinstance(expect, Exits):
        code, printed = case.run(engine, ctx)
        assert code == expect.code, printed
        assert re.search(expect.match, printed), printed
        assert "Traceback" not in printed
    else:
        expect.check(case.run(engine, ctx))


def test_unknown_setting_is_both_a_type_and_a_value_error():
    # A TypeError, as Python's own for an unknown keyword; a ValueError, the command line's
    # user errors (one line, exit code 2).
    with pytest.raises(ValueError, match="did you mean 'num_samples'"):
        infer("nuts", num_sampels=10)


# -- observed data: shapes and dtypes, property-style (a seeded loop) ---------------------
def _accepted(shape, expected=(N,)):
    """The documented rule: data the distribution broadcasts over, one term per value."""
    try:
        full = np.broadcast_shapes(shape, expected)
    except ValueError:
        return False
    return int(np.prod(full)) == int(np.prod(shape))


def _random_shapes(seed, count):
    rng = np.random.default_rng(seed)
    sizes = [1, 2, 29, 30, 31]
    for _ in range(count):
        ndim = int(rng.integers(0, 4))
        yield tuple(int(rng.choice(sizes)) for _ in range(ndim))


DTYPES = [np.float16, np.float32, np.float64, np.int32, np.int64]


@pytest.mark.parametrize("seed", range(4))
def test_observed_shapes_and_dtypes_are_refused_naming_site_and_shapes(seed):
    rng = np.random.default_rng(100 + seed)
    model = ppl.from_numpyro(regression, X, Y)
    for shape in _random_shapes(seed, 12):
        dtype = DTYPES[int(rng.integers(len(DTYPES)))]
        y = rng.normal(size=shape).astype(dtype)
        if _accepted(shape):
            built = ppl.from_numpyro(regression, X, y)
            assert built.num_observations == int(np.prod(shape)), (shape, dtype)
            assert np.isfinite(float(built.log_density(jnp.zeros(2)))), (shape, dtype)
            model.with_data({"y": y})
            continue
        for attempt in (lambda y=y: ppl.from_numpyro(regression, X, y),
                        lambda y=y: model.with_data({"y": y})):
            with pytest.raises(ValueError) as info:
                attempt()
            message = str(info.value)
            assert "Observed site 'y'" in message, (shape, dtype, message)
            assert f"expects data of shape {(N,)}" in message, (shape, message)
            assert f"got shape {shape}" in message, (shape, message)
            _assert_from_ppl(info.value)


@pytest.mark.parametrize("seed", range(3))
def test_non_finite_values_anywhere_are_counted_and_named(seed):
    rng = np.random.default_rng(200 + seed)
    model = ppl.from_numpyro(regression, X, Y)
    for _ in range(5):
        dtype = [np.float16, np.float32, np.float64][int(rng.integers(3))]
        y = Y.astype(dtype)
        where = rng.choice(N, size=int(rng.integers(1, 6)), replace=False)
        y[where] = rng.choice([np.nan, np.inf, -np.inf], size=where.size)
        for attempt in (lambda y=y: ppl.from_numpyro(regression, X, y),
                        lambda y=y: model.with_data({"y": y})):
            with pytest.raises(ValueError, match=rf"site 'y' contains {where.size} non-finite"):
                attempt()
