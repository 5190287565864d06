"""Our JAX architectures against PyTorch transformers on the same random weights."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models import lm


def _torch_log_probs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor(np.asarray(ids), dtype=torch.long)).logits
    return torch.log_softmax(logits, -1).numpy(), logits.numpy()


@pytest.mark.parametrize("which", ["gpt2_dir", "qwen2_dir"])
def test_logits_match_transformers(which, request):
    path, torch_model = request.getfixturevalue(which)
    model = lm.load(path)
    vocab = model.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, size=(3, 20))
    expected_log_probs, expected_logits = _torch_log_probs(torch_model, ids)

    positions = jnp.broadcast_to(jnp.arange(20), (3, 20))
    cache = model._empty_cache(3, 20)
    logits, _ = model.transformer(jnp.asarray(ids), positions, cache, positions)
    np.testing.assert_allclose(np.asarray(logits), expected_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        np.asarray(model.log_probs(ids)), expected_log_probs, atol=1e-5, rtol=0
    )


def test_qwen2_checkpoint_is_sharded(qwen2_dir):
    path, _ = qwen2_dir
    assert (path / "model.safetensors.index.json").is_file()


def test_eos_from_config(gpt2_dir):
    path, _ = gpt2_dir
    assert lm.load(path).end_ids == (60,)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(
        ValueError, match="LlamaForCausalLM.*supported: GPT2LMHeadModel, Qwen2ForCausalLM"
    ):
        lm.load(tmp_path)


def test_missing_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model.safetensors"):
        lm.load(tmp_path)
