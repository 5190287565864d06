"""Tokens per second of batched sampling: KV cache vs full recompute vs transformers.

    python bench/lm.py                      # CPU, a small random Qwen2, batch 1/16/64, 512 tokens
    python bench/lm.py --size real --dtype bfloat16   # a Qwen2-0.5B-shaped random model (GPU)

Every contender runs the same random weights (a transformers model saved with
``save_pretrained`` and loaded back through ``ppl.models.lm.load``) and generates
``--tokens`` new tokens after a 16-token prompt, sampling at temperature 1 without early
stopping.

- ppl cached: one jitted ``init_state`` + ``sample_step`` (``lax.while_loop`` over tokens,
  one-token forward against the KV cache).
- ppl recompute: the same sampling without a cache; every token reruns the whole
  fixed-size ``prompt + tokens`` buffer (static shapes, so each step costs the same and
  the rate is measured over ``--recompute-steps`` steps and is exact for the whole run).
- transformers: ``generate(do_sample=True, use_cache=True)`` on the same weights (torch).

Compile time is excluded (one warm-up call per shape); the median of ``--repeats`` timed
calls is reported. Results go to ``bench/results/lm_<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

SIZES = {
    # ~1.4M parameters: what 2 shared CPU cores can run at batch 64 x 512 tokens.
    "small": dict(
        vocab_size=2048,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    # The shape of Qwen2-0.5B (random weights).
    "real": dict(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
}
PROMPT = 16


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ppl(model, batch, tokens, repeats, recompute_steps):
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, model.vocab_size, (batch, PROMPT)))
    lengths = jnp.full((batch,), PROMPT)
    no_stop = jnp.array([], jnp.int32)

    @eqx.filter_jit
    def cached(model, key):
        state = model.init_state(prompt, lengths, PROMPT + tokens)
        _, out = model.sample_step(
            key, state, temperature=1.0, stop_ids=no_stop, max_new_tokens=tokens
        )
        return out.tokens

    @eqx.filter_jit
    def recompute(model, key, buffer):
        positions = jnp.broadcast_to(jnp.arange(buffer.shape[1]), buffer.shape)

        def body(i, carry):
            buffer, key = carry
            key, subkey = jax.random.split(key)
            logits, _ = model.transformer(buffer, positions, None, None)
            token = jax.random.categorical(
                subkey, logits[:, PROMPT + tokens - recompute_steps + i - 1]
            )
            return buffer.at[:, PROMPT + tokens - recompute_steps + i].set(token), key

        return jax.lax.fori_loop(0, recompute_steps, body, (buffer, key))[0]

    key = jax.random.key(0)
    cached(model, key).block_until_ready()
    cached_s = _median_seconds(lambda: cached(model, key).block_until_ready(), repeats)
    buffer = jnp.zeros((batch, PROMPT + tokens), jnp.int32).at[:, :PROMPT].set(prompt)
    recompute(model, key, buffer).block_until_ready()
    recompute_s = _median_seconds(
        lambda: recompute(model, key, buffer).block_until_ready(), repeats
    )
    return batch * tokens / cached_s, batch * recompute_steps / recompute_s


def bench_transformers(torch_model, batch, tokens, repeats, device):
    import torch

    prompt = torch.tensor(
        np.random.default_rng(0).integers(0, torch_model.config.vocab_size, (batch, PROMPT)),
        device=device,
    )
    kwargs = dict(
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        use_cache=True,
        pad_token_id=0,
        attention_mask=torch.ones_like(prompt),
    )

    def run():
        with torch.no_grad():
            torch_model.generate(prompt, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()

    run()
    return batch * tokens / _median_seconds(run, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recompute-steps", type=int, default=8)
    parser.add_argument("--label", default=None, help="results file suffix (default: backend)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    import torch
    import transformers
    from ppl.models import lm

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = transformers.Qwen2Config(
        **SIZES[args.size], max_position_embeddings=PROMPT + args.tokens, tie_word_embeddings=True
    )
    torch_model = transformers.Qwen2ForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as directory:
        torch_model.save_pretrained(directory)
        model = lm.load(directory, dtype=getattr(jnp, args.dtype))
    torch_model = torch_model.to(device=device, dtype=getattr(torch, args.dtype))
    num_params = sum(p.numel() for p in torch_model.parameters())

    rows = []
    for batch in map(int, args.batches.split(",")):
        cached, recompute = bench_ppl(model, batch, args.tokens, args.repeats, args.recompute_steps)
        hf = bench_transformers(torch_model, batch, args.tokens, args.repeats, device)
        row = {
            "batch": batch,
            "tokens": args.tokens,
            "ppl_cached_tok_s": cached,
            "ppl_recompute_tok_s": recompute,
            "transformers_tok_s": hf,
            "cached_over_recompute": cached / recompute,
            "ppl_over_transformers": cached / hf,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)

    label = args.label or jax.default_backend()
    meta = {
        "size": args.size,
        "parameters": num_params,
        "dtype": args.dtype,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "machine": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "prompt": PROMPT,
        "repeats": args.repeats,
        "recompute_steps": args.recompute_steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"lm_{label}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        f"# LM sampling throughput ({label}; Qwen2 {args.size}, {num_params / 1e6:.1f}M params, "
        f"{args.dtype}, prompt {PROMPT} + {args.tokens} new tokens)",
        "",
        "| batch | ppl cached tok/s | ppl recompute tok/s | transformers tok/s "
        "| cached / recompute | ppl / transformers |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['ppl_cached_tok_s']:.0f} | {r['ppl_recompute_tok_s']:.0f} | "
            f"{r['transformers_tok_s']:.0f} | {r['cached_over_recompute']:.1f}x | "
            f"{r['ppl_over_transformers']:.2f}x |"
        )
    (args.out / f"lm_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
