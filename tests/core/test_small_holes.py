"""Small holes of issue 17: refused settings and inputs say what is wrong, early and by name.

Tempered SMC with one particle, int seeds and float keys in the engines called directly,
``ppl.load`` of files ppl did not write, and the command line's errors (``--out`` checked
before sampling, user errors without a traceback, an unknown model tag).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.mcmc.sampler import sample_hmc, sample_nuts
from ppl.inference.smc.tempered import sample_smc
from ppl.inference.vi.coin import sample_coin_ksdd, sample_coin_svgd
from ppl.inference.vi.flow import fit, fit_flow_vi
from ppl.inference.vi.svgd import sample_svgd

import ppl
from ppl import cli


def _gaussian():
    return ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(1))


def _conjugate():
    from ppl import models

    return models.get("conjugate_normal").build()


# -- 1. tempered SMC needs two particles -----------------------------------------------------
@pytest.mark.parametrize("run", [
    lambda m: sample_smc(jax.random.key(0), m, num_particles=1),
    lambda m: ppl.infer(m, "smc", key=0, num_particles=1),
])
def test_tempered_smc_refuses_a_single_particle(run):
    with pytest.raises(ValueError, match=r"num_particles >= 2.*resampling and the ESS"):
        run(_conjugate())


# -- 2. the engines called directly take an int seed, and refuse a float key -----------------
_ENGINES = [sample_nuts, sample_hmc, sample_smc, fit, fit_flow_vi, sample_coin_svgd,
            sample_coin_ksdd, sample_svgd]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("engine", _ENGINES, ids=lambda f: f.__name__)
def test_engines_called_directly_take_an_int_seed(engine, monkeypatch):
    # Stop at the engine's first split, before anything compiles: is the key a typed key?
    def split(key, num=2):
        assert jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key), key
        raise _Stop

    monkeypatch.setattr(jax.random, "split", split)
    with pytest.raises(_Stop):
        engine(0, _gaussian())


@pytest.mark.parametrize("engine", _ENGINES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("key", [0.5, jnp.float32(1.0), jnp.zeros(2)])
def test_engines_called_directly_refuse_a_float_key(engine, key):
    with pytest.raises(ValueError, match="PRNG key .* or an int seed"):
        engine(key, _gaussian())


def test_nuts_called_directly_with_an_int_seed_matches_the_facade():
    settings = dict(num_chains=1, num_warmup=50, num_samples=20, progress_bar=False)
    direct = sample_nuts(3, _gaussian(), **settings)
    facade = ppl.infer(_gaussian(), "nuts", key=3, **settings)
    np.testing.assert_array_equal(direct.samples["x"], facade.samples["x"])


# -- 3. ppl.load of files ppl did not write ---------------------------------------------------
def test_load_names_a_file_that_is_not_netcdf(tmp_path):
    path = tmp_path / "garbage.nc"
    path.write_bytes(b"this is not a netCDF file")
    with pytest.raises(ValueError, match="garbage.nc.*not a netCDF-4 file"):
        ppl.load(path)


def test_load_names_a_truncated_file(tmp_path):
    path = tmp_path / "full.nc"
    ppl.Posterior(samples={"mu": np.zeros((2, 30))}).save(path)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.nc.*truncated"):
        ppl.load(truncated)


def test_load_says_a_file_was_not_written_by_ppl(tmp_path):
    import xarray as xr

    plain = tmp_path / "plain.nc"
    xr.Dataset({"a": ("x", np.arange(3.0))}).to_netcdf(plain, engine="h5netcdf")
    with pytest.raises(ValueError, match="plain.nc was not written by ppl.*no 'posterior'"):
        ppl.load(plain)
    # A posterior group, but no (chain, draw) dimensions, or meta that is not ppl's.
    odd = tmp_path / "odd.nc"
    xr.DataTree.from_dict({"/posterior": xr.Dataset({"x": ("d", np.arange(3.0))})}).to_netcdf(
        odd, engine="h5netcdf")
    with pytest.raises(ValueError, match="odd.nc was not written by ppl.*chain, draw"):
        ppl.load(odd)
    meta = tmp_path / "meta.nc"
    posterior = xr.Dataset({"x": (("chain", "draw"), np.zeros((1, 3)))},
                           attrs={"ppl_meta": "[1, 2]"})
    xr.DataTree.from_dict({"/posterior": posterior}).to_netcdf(meta, engine="h5netcdf")
    with pytest.raises(ValueError, match="meta.nc was not written by ppl.*ppl_meta"):
        ppl.load(meta)


# -- 4, 5. ppl run: --out checked first; user errors as one line, exit code 2 ----------------
def test_cli_run_checks_out_before_sampling(tmp_path, capsys, monkeypatch):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(ppl, "infer", no_sampling)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli.main(["run", "conjugate_normal", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl: error: Cannot save to --out") and "Traceback" not in err
    (tmp_path / "posterior.nc").write_text("")
    assert cli.main(["run", "conjugate_normal", "--out", str(tmp_path)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # A new directory is created, and the write check leaves nothing behind.
    with pytest.raises(AssertionError, match="sampled before"):
        cli.main(["run", "conjugate_normal", "--out", str(tmp_path / "new" / "dir")])
    assert list((tmp_path / "new" / "dir").iterdir()) == []


def test_cli_prints_user_errors_without_a_traceback(capsys, monkeypatch):
    monkeypatch.delenv("PPL_DEBUG", raising=False)
    assert cli.main(["run", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl: error: Unknown model 'no_such_model'") and "Traceback" not in err
    monkeypatch.setenv("PPL_DEBUG", "1")
    with pytest.raises(ValueError, match="Unknown model"):
        cli.main(["run", "no_such_model"])


def test_cli_shows_a_model_builders_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PPL_DEBUG", raising=False)
    (tmp_path / "ppl_holes_builders.py").write_text(
        "def needs_data():\n"
        "    raise ValueError('the data file data.csv is missing')\n"
        "def broken():\n"
        "    raise RuntimeError('a bug in the builder')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["run", "ppl_holes_builders:needs_data"]) == 2
    assert "data.csv is missing" in capsys.readouterr().err
    # Not a user error: the traceback stays.
    with pytest.raises(RuntimeError, match="a bug in the builder"):
        cli.main(["run", "ppl_holes_builders:broken"])


# -- 6. ppl models --tag with no match -------------------------------------------------------
def test_cli_models_with_an_unknown_tag_lists_the_known_tags(capsys):
    assert cli.main(["models", "--tag", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no model has the tag 'nosuch'" in err and "closed_form" in err


def test_subpackages_resolve_after_import_ppl():
    """The README's ``ppl.diagnostics.coverage(...)`` and ``ppl.models.get(...)`` work after a
    bare ``import ppl`` (in a fresh interpreter, where nothing else imported them)."""
    import subprocess
    import sys

    code = ("import sys, ppl; assert 'ppl.diagnostics' not in sys.modules; "
            "print(ppl.diagnostics.coverage.__name__, ppl.models.get.__name__, "
            "ppl.inference.llm.run.__name__, ppl.inference.mcmc.sampler.sample_nuts.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["coverage", "get", "run", "sample_nuts"]
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        ppl.nosuch  # noqa: B018
