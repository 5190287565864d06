"""A-NeSI on N-digit addition of scikit-learn's 8x8 digits: accuracy against the ceiling, and
the time per epoch of exact inference against A-NeSI's.

    python bench/anesi.py                      # the shipped checkpoints N = 1, 2, 4, 15
    python bench/anesi.py --digits 1 2 --examples 2000

Three parts, one run:

* **The ceiling.** The same perception network trained *with digit labels* (3 seeds,
  :func:`~ppl.inference.amortized.anesi.perception.train_supervised`) has single-digit test
  accuracy ``p``; a sum of two N-digit numbers needs all 2N images read right, so about
  ``p^(2N)`` is the best a perception of this architecture allows.
* **Accuracy.** Each shipped checkpoint (``models/amortized/anesi/n<N>``, trained from sums
  alone by ``ppl anesi train``) predicts the sums of ``--examples`` test examples (images
  1200..1796 only, drawn with seed 1, apart from the checkpoint's own evaluation seed 0), with
  the standard error; every predicted sum is checked to be a possible output of the program
  (an integer in ``[0, 2 (10^N - 1)]``, computed in Python integers, not with the pruning
  masks that produced it). For N = 1, 2 the exact baseline (the same network trained by the
  exact likelihood, 10^(2N) assignments per example, the same steps) is trained and scored
  too.
* **Time per epoch.** One training step (batch 32, forward and backward) of A-NeSI's joint
  phase and of the exact likelihood, for N = 1..4, compiled first, median of repeats; an
  epoch is the 1,200 training images read once, ``1200 / (2N)`` examples. Exact enumeration
  at N = 3, 4 is streamed (constant memory); at N = 4 it is timed on a batch of 4 and scaled
  by 8 (the work is linear in the batch).

Writes ``bench/results/anesi_cpu.{json,md}`` and ``anesi_time_per_epoch.png``, with the date
and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ppl.inference.amortized.anesi import (
    Addition,
    ANeSI,
    InferenceModel,
    PerceptionNetwork,
    exact_output_distribution,
    log_prob,
    train_exact,
)
from ppl.inference.amortized.anesi.data import NUM_TRAIN, load_split, sample_examples
from ppl.inference.amortized.anesi.exact import (
    assignment_table,
    exact_log_prob,
    exact_log_prob_streamed,
)
from ppl.inference.amortized.anesi.perception import beliefs, log_beliefs, train_supervised
from ppl.inference.amortized.anesi.train import checkpoint_path

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_MNIST = {1: 97.66, 2: 95.96, 4: 92.56, 15: 75.90}  # van Krieken et al. 2023, predict
BATCH = 32


def _ceiling(seeds=(0, 1, 2)) -> float:
    return float(np.mean([train_supervised(jax.random.key(s))[1] for s in seeds]))


def _valid_sum(value, n: int) -> bool:
    return 0 <= int(value) <= 2 * (10 ** n - 1)


def _accuracy(model: ANeSI, num_examples: int, seed: int = 1) -> dict:
    program = model.program
    examples = sample_examples(jax.random.key(seed), load_split("test"), program, num_examples)
    prediction = model.predict_outputs(np.asarray(examples.images))
    right = np.all(prediction.digits == np.asarray(examples.outputs), axis=1)
    valid = [_valid_sum(v, program.num_digits) for v in prediction.values]
    acc = float(right.mean())
    return {"accuracy": acc, "se": float(np.sqrt(acc * (1 - acc) / num_examples)),
            "valid_fraction": float(np.mean(valid)), "num_examples": num_examples}


def _exact_accuracy(n: int, steps: int, num_examples: int, seed: int = 1) -> dict:
    program = Addition(n)
    result = train_exact(jax.random.key(0), program, steps=steps)
    examples = sample_examples(jax.random.key(seed), load_split("test"), program, num_examples)
    log_p = log_beliefs(result.perception, examples.images)
    values, probabilities = exact_output_distribution(program, log_p)
    predicted = np.asarray(values)[np.argmax(np.asarray(probabilities), axis=1)]
    truth = np.asarray(examples.symbols[:, :n]) @ (10 ** np.arange(n)[::-1]) + \
        np.asarray(examples.symbols[:, n:]) @ (10 ** np.arange(n)[::-1])
    acc = float(np.mean(predicted == truth))
    return {"accuracy": acc, "se": float(np.sqrt(acc * (1 - acc) / num_examples)),
            "train_time_s": result.wall_time, "steps": steps}


def _step_time(loss_fn, params, batch_key, repeats: int) -> float:
    """Median wall time of one Adam step of ``loss_fn(params, key)``, compiled first."""
    optimizer = optax.adam(1e-3)

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(loss_fn)(params, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    jax.block_until_ready(step(params, opt_state, batch_key))
    times = []
    for r in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(params, opt_state, jax.random.fold_in(batch_key, r)))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _epoch_times(n: int, repeats: int) -> dict:
    program = Addition(n)
    split = load_split("train")
    f = PerceptionNetwork(jax.random.key(0))
    q = InferenceModel(jax.random.key(1), program=program)
    f_params, f_static = eqx.partition(f, eqx.is_array)
    q_params, q_static = eqx.partition(q, eqx.is_array)
    steps_per_epoch = NUM_TRAIN / (2 * n) / BATCH

    def anesi_loss(params, key):
        # the joint step: the perception through q, and q on its sampled symbols
        f_p, q_p = params
        examples = sample_examples(key, split, program, BATCH)
        model_q = eqx.combine(q_p, q_static)
        p = beliefs(eqx.combine(f_p, f_static), examples.images)
        symbols = jax.random.categorical(key, jnp.log(jax.lax.stop_gradient(p)))
        return (-jnp.mean(log_prob(model_q, program, p, examples.outputs))
                - jnp.mean(log_prob(model_q, program, jax.lax.stop_gradient(p),
                                    program(symbols))))

    anesi = _step_time(anesi_loss, (f_params, q_params), jax.random.key(2), repeats)
    exact_batch = BATCH if n <= 3 else 4
    table = assignment_table(program) if n <= 2 else None

    def exact_loss(f_p, key):
        examples = sample_examples(key, split, program, exact_batch)
        log_p = log_beliefs(eqx.combine(f_p, f_static), examples.images)
        if table is not None:
            return -jnp.mean(exact_log_prob(program, log_p, examples.outputs, table))
        return -jnp.mean(exact_log_prob_streamed(program, log_p, examples.outputs))

    exact = _step_time(exact_loss, f_params, jax.random.key(3), repeats if n <= 3 else 1)
    exact *= BATCH / exact_batch
    return {"anesi_step_s": anesi, "exact_step_s": exact,
            "anesi_epoch_s": anesi * steps_per_epoch, "exact_epoch_s": exact * steps_per_epoch,
            "exact_batch_timed": exact_batch}


def _plot(epochs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(epochs)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.semilogy(ns, [epochs[n]["exact_epoch_s"] for n in ns], "o-", label="exact enumeration")
    ax.semilogy(ns, [epochs[n]["anesi_epoch_s"] for n in ns], "s-", label="A-NeSI")
    ax.set_xticks(ns)
    ax.set_xlabel("N (digits per number)")
    ax.set_ylabel("seconds per epoch (log scale)")
    ax.set_title("Training time per epoch, 2-core CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[1, 2, 4, 15])
    parser.add_argument("--examples", type=int, default=5000)
    parser.add_argument("--exact-steps", type=int, default=20000,
                        help="training steps of the exact baseline (N = 1, 2)")
    parser.add_argument("--timing-digits", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    p = _ceiling()
    rows = {}
    for n in args.digits:
        model = ANeSI.load(checkpoint_path(n), num_digits=n)
        row = {"ceiling": p ** (2 * n), **_accuracy(model, args.examples),
               "train_time_s": model.record.get("wall_time_s"),
               "steps": model.settings.steps, "paper_mnist": PAPER_MNIST.get(n)}
        if n <= 2:
            row["exact"] = _exact_accuracy(n, args.exact_steps, args.examples)
        rows[n] = row
        print(f"N={n}: accuracy {row['accuracy']:.3f} +- {row['se']:.3f}, ceiling "
              f"{row['ceiling']:.3f}", flush=True)
    epochs = {n: _epoch_times(n, args.repeats) for n in args.timing_digits}
    load_end = os.getloadavg()

    result = {"date": datetime.date.today().isoformat(), "machine": platform.platform(),
              "cpus": os.cpu_count(), "load_start": load_start, "load_end": load_end,
              "jax": jax.__version__, "supervised_digit_accuracy": p,
              "accuracy": rows, "epoch_times": epochs}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"anesi_{args.label}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(epochs, RESULTS / "anesi_time_per_epoch.png")

    lines = [f"# A-NeSI on N-digit addition of 8x8 digits ({result['date']})", "",
             f"`python bench/anesi.py`; {os.cpu_count()} CPUs, load average "
             f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; JAX "
             f"{jax.__version__}. Supervised single-digit test accuracy p = {p:.3f} (same "
             f"perception network, digit labels, mean of 3 seeds). {args.examples} test "
             "examples per row.", "",
             "| N | A-NeSI sum accuracy | p^(2N) | accuracy - p^(2N) | valid sums | "
             "exact baseline | training time | paper (MNIST) |",
             "|---|---|---|---|---|---|---|---|"]
    for n, row in rows.items():
        exact = row.get("exact")
        exact_text = (f"{exact['accuracy']:.3f} ± {exact['se']:.3f}" if exact
                      else "infeasible (10^" + str(2 * n) + " terms)")
        train_time = row["train_time_s"]
        lines.append(
            f"| {n} | {row['accuracy']:.3f} ± {row['se']:.3f} | {row['ceiling']:.3f} | "
            f"{row['accuracy'] - row['ceiling']:+.3f} | {100 * row['valid_fraction']:.0f}% | "
            f"{exact_text} | {train_time / 60:.1f} min | {row['paper_mnist']:.2f}% |")
    lines += ["", "Time per epoch (1,200 training images read once, batch 32; "
              "`anesi_time_per_epoch.png`):", "",
              "| N | exact | A-NeSI | exact / A-NeSI |", "|---|---|---|---|"]
    for n, row in epochs.items():
        lines.append(f"| {n} | {row['exact_epoch_s']:.3g} s | {row['anesi_epoch_s']:.3g} s | "
                     f"{row['exact_epoch_s'] / row['anesi_epoch_s']:.3g} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
