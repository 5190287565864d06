"""Shared fixtures: tiny random Hugging Face checkpoints saved to a temporary directory."""

import pytest


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    import torch
    import transformers

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
    import torch
    import transformers

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


@pytest.fixture(scope="session")
def check_chunked_decoding():
    """``check(model, sequences, lengths, schedule, *, width, cache_length, atol)``: feed
    ``sequences`` after their first ``lengths`` tokens in chunks of ``width`` (row ``i`` takes
    ``schedule[k][i]`` tokens at step ``k``) and compare every score, the lengths and the
    next-token log-probabilities with one full recomputation."""
    import equinox as eqx
    import numpy as np

    def check(model, sequences, lengths, schedule, *, width, cache_length, atol):
        rows = np.arange(len(lengths))
        full = np.asarray(model.log_probs(sequences))
        extend = eqx.filter_jit(lambda m, s, t, n: m.extend(s, t, n))
        start = eqx.filter_jit(lambda m, p, n: m.init_state(p, n, cache_length))
        state = start(model, sequences[:, : int(lengths.max())], lengths)
        for num_valid in schedule:
            num_valid = np.asarray(num_valid)
            chunk = np.zeros((len(rows), width), np.int64)
            for row in rows:
                chunk[row, : num_valid[row]] = sequences[
                    row, lengths[row] : lengths[row] + num_valid[row]
                ]
            state, scores = extend(model, state, chunk, num_valid)
            for row in rows:
                positions = lengths[row] + np.arange(num_valid[row])
                expected = full[row, positions - 1, sequences[row, positions]]
                np.testing.assert_allclose(scores[row, : num_valid[row]], expected, atol=atol)
                assert np.all(np.asarray(scores[row, num_valid[row] :]) == 0)
            lengths = lengths + num_valid
            np.testing.assert_array_equal(state.lengths, lengths)
            np.testing.assert_allclose(model.next_log_probs(state), full[rows, lengths - 1],
                                       atol=atol)

    return check
