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

Compile time is excluded (one warm-up call per shape). The cached sampler and transformers
alternate call by call (``--repeats`` timed calls each), so that a change of load on a shared
machine hits both; the median and the best call are reported, with the 1-minute load average
over each row. Results go to ``bench/results/lm_<label>.{json,md}``.
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


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _load():
    return float(Path("/proc/loadavg").read_text().split()[0])


def ppl_runners(model, batch, tokens, recompute_steps):
    """Warmed-up ``(cached, recompute)`` calls that block until done."""
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
    buffer = jnp.zeros((batch, PROMPT + tokens), jnp.int32).at[:, :PROMPT].set(prompt)
    run_cached = lambda: cached(model, key).block_until_ready()  # noqa: E731
    run_recompute = lambda: recompute(model, key, buffer).block_until_ready()  # noqa: E731
    run_cached()
    run_recompute()
    return run_cached, run_recompute


def transformers_runner(torch_model, batch, tokens, device):
    """A warmed-up ``generate`` call on the same prompt shape."""
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
    return run


def bench_row(model, torch_model, batch, tokens, repeats, recompute_steps, device):
    cached, recompute = ppl_runners(model, batch, tokens, recompute_steps)
    hf = transformers_runner(torch_model, batch, tokens, device)
    loads = [_load()]
    times = {"ppl_cached": [], "transformers": []}
    for _ in range(repeats):
        times["ppl_cached"].append(_seconds(cached))
        times["transformers"].append(_seconds(hf))
    recompute_s = statistics.median(_seconds(recompute) for _ in range(repeats))
    loads.append(_load())
    rate = {name: [batch * tokens / t for t in ts] for name, ts in times.items()}
    cached_tok_s, hf_tok_s = (
        statistics.median(rate["ppl_cached"]),
        statistics.median(rate["transformers"]),
    )
    recompute_tok_s = batch * recompute_steps / recompute_s
    return {
        "batch": batch,
        "tokens": tokens,
        "ppl_cached_tok_s": cached_tok_s,
        "ppl_recompute_tok_s": recompute_tok_s,
        "transformers_tok_s": hf_tok_s,
        "cached_over_recompute": cached_tok_s / recompute_tok_s,
        "ppl_over_transformers": cached_tok_s / hf_tok_s,
        "ppl_cached_best_tok_s": max(rate["ppl_cached"]),
        "transformers_best_tok_s": max(rate["transformers"]),
        "best_ppl_over_best_transformers": max(rate["ppl_cached"]) / max(rate["transformers"]),
        "ppl_cached_all_tok_s": rate["ppl_cached"],
        "transformers_all_tok_s": rate["transformers"],
        "load_1min_before_after": loads,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recompute-steps", type=int, default=8)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's own); on a loaded 2-core machine 1 is "
        "far faster than 2 (two threads wait on each other at every op)",
    )
    parser.add_argument("--label", default=None, help="results file suffix (default: backend)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)

    import torch
    import transformers
    from ppl.models import lm

    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
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
        row = bench_row(
            model, torch_model, batch, args.tokens, args.repeats, args.recompute_steps, device
        )
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
        f"Median (best) of {args.repeats} alternating calls; transformers on "
        f"{torch.get_num_threads()} torch thread(s); load: 1-minute load average before and "
        "after the row.",
        "",
        "| batch | ppl cached tok/s | ppl recompute tok/s | transformers tok/s "
        "| cached / recompute | ppl / transformers | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['ppl_cached_tok_s']:.0f} ({r['ppl_cached_best_tok_s']:.0f}) | "
            f"{r['ppl_recompute_tok_s']:.0f} | "
            f"{r['transformers_tok_s']:.0f} ({r['transformers_best_tok_s']:.0f}) | "
            f"{r['cached_over_recompute']:.1f}x | {r['ppl_over_transformers']:.2f}x "
            f"({r['best_ppl_over_best_transformers']:.2f}x) | "
            + " -> ".join(f"{x:.1f}" for x in r["load_1min_before_after"])
            + " |"
        )
    (args.out / f"lm_{label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
