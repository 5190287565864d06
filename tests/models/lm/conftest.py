"""Shared fixtures: tiny random Hugging Face checkpoints saved to a temporary directory."""

import importlib
import sys
import types
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[3]


def _map_namespace():
    """Maps ppl.models to models/ as pyproject's package-dir does, when ppl is not installed."""
    try:
        importlib.import_module("ppl.models.lm")
        return
    except ImportError:
        pass
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    ppl = importlib.import_module("ppl")
    if "ppl.models" not in sys.modules:
        models = types.ModuleType("ppl.models")
        models.__path__ = [str(_ROOT / "models")]
        sys.modules["ppl.models"] = models
        ppl.models = models


_map_namespace()


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=61,
        n_positions=48,
        n_embd=32,
        n_layer=2,
        n_head=4,
        eos_token_id=60,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    _perturb(torch, model)
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.Qwen2Config(
        vocab_size=67,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        eos_token_id=66,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    _perturb(torch, model)
    path = tmp_path_factory.mktemp("qwen2")
    # A small shard size, so the sharded index path is what gets loaded.
    model.save_pretrained(path, max_shard_size="40KB")
    return path, model


def _perturb(torch, model):
    # Hugging Face initialises biases to 0 and norms to 1; random values test their wiring.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
