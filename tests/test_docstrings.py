"""Every docstring example (``>>>``) in the library runs and prints what it shows."""

import doctest
import importlib

import pytest

MODULES = [
    "ppl.model", "ppl.reward_model", "ppl.numpyro_model", "ppl.infer",
    "ppl.inference.smc.pmmh", "ppl.inference.smc.particle_filter", "ppl.inference.vi.coin",
    "ppl.inference.vi.flow", "ppl.inference.mcmc.kernels", "ppl.diagnostics.coverage",
    "ppl.diagnostics.tarp", "ppl.models.posteriordb", "ppl.models.zoo", "ppl.models.lm.reward",
    "ppl.models.lm.testbed.prm", "ppl.inference.amortized", "ppl.inference.amortized.gmm",
    "ppl.inference.mcmc.batched",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch, request):
    if name == "ppl.models.posteriordb":
        request.getfixturevalue("posteriordb_dir")  # its example reads the reference data
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)
    assert result.attempted > 0, f"{name} has no examples left: drop it from MODULES"
    assert result.failed == 0, f"{result.failed} failing example(s) in {name} (printed above)"
