"""Constrained generation against the exactly normalised constrained distribution.

An enumerable Markov model over {a, b} (an end token stops a sequence, four tokens at most)
and the constraint "no two b in a row, and not empty at the end". With one particle per
problem the pairs (x, w) must be properly weighted: E[w 1(x = s)] = p(s) c(s) for every
sequence s, and E[w] = P(constraint holds); a weight that ignores the second check (the
mass not yet rejected) is the negative control. With several particles and resampling the
evidence stays unbiased.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.llm import constrained
from ppl.inference.llm import population as P
from ppl.inference.llm.job import Job
from ppl.models.lm import toy
from scipy import stats

TOKENIZER = toy.CharTokenizer("ab")
END = TOKENIZER.end_id
LIMIT = 4


def constraint(prompt, text, ended=False):
    return "bb" not in text and not (ended and not text)


@pytest.fixture(scope="module")
def model():
    return toy.random_markov_model(jax.random.key(21), vocab_size=TOKENIZER.vocab_size,
                                   max_length=8, end_ids=(END,), scale=1.0)


def enumerate_constrained(model, prompt):
    log_probs = np.asarray(jax.nn.log_softmax(model.logits, axis=-1))
    out = {}
    for length in range(1, LIMIT + 1):
        for seq in itertools.product(range(TOKENIZER.vocab_size), repeat=length):
            if END in seq[:-1] or (length < LIMIT and seq[-1] != END):
                continue
            text = TOKENIZER.decode(seq)
            prefixes_ok = all(constraint("", TOKENIZER.decode(seq[: i + 1]),
                                         ended=seq[i] == END) for i in range(length))
            pos, prev, p = len(prompt) - 1, prompt[-1], 1.0
            for t in seq:
                p *= np.exp(log_probs[pos, prev, t])
                pos, prev = pos + 1, t
            out[seq] = p * prefixes_ok
            del text
    return out


def _run(model, groups, num_particles, seed, **kwargs):
    prompt = "a"
    ids = np.asarray([TOKENIZER.encode(prompt)] * groups, np.int32)
    step = P.Settings(num_particles=num_particles, temperature=1.0, stop_ids=(),
                      end_ids=(END,), max_step_tokens=LIMIT, max_steps=1)
    job = Job(lm=model, reward=None, prompts=[prompt] * groups, prompt_ids=ids,
              prompt_lengths=np.ones(groups, np.int32), context=None, max_length=8,
              step=step, decode=TOKENIZER.decode, allow_collapse=False, on_step=None,
              labels=[str(g) for g in range(groups)])
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(groups))
    return constrained.constrained_smc(keys, job, constraint=constraint, **kwargs)


def _weighted_cells(out, exact):
    batch = out.batch
    weights = np.exp(out.log_evidence)
    draws = [tuple(int(t) for t in batch.tokens[r, : batch.length[r]])
             for r in range(len(batch.length))]
    return draws, weights


def _z_scores(draws, weights, exact):
    z = []
    for seq, truth in exact.items():
        values = weights * np.array([d == seq for d in draws])
        se = values.std(ddof=1) / np.sqrt(len(values))
        if se > 0:
            z.append((values.mean() - truth) / se)
        else:
            assert truth < 1e-3 or values.mean() == truth
    return np.abs(z)


@pytest.mark.slow
def test_single_particles_are_properly_weighted(model):
    exact = enumerate_constrained(model, TOKENIZER.encode("a"))
    out = _run(model, 6000, 1, seed=0)
    draws, weights = _weighted_cells(out, exact)
    assert all(exact.get(d, 0.0) > 0 for d in draws)  # every draw keeps the constraint
    z = _z_scores(draws, weights, exact)
    limit = stats.norm.ppf(1 - 0.001 / (2 * len(exact)))
    assert z.max() < limit, z.max()
    total = sum(exact.values())
    assert abs(weights.mean() - total) < 4 * weights.std(ddof=1) / np.sqrt(len(weights))
    # Fewer constraint checks than the vocabulary per token (3 here; a real vocabulary is
    # far larger and the saving far bigger).
    assert out.extra["checks_per_token"] < TOKENIZER.vocab_size


@pytest.mark.slow
def test_a_weight_without_the_second_check_is_biased(model, monkeypatch):
    exact = enumerate_constrained(model, TOKENIZER.encode("a"))

    def improper(order, log_probs, allowed, more=None):
        # The mass not rejected so far, 1 - p(rejected): the tempting, biased weight.
        probs = np.exp(np.asarray(log_probs, np.float64))
        seen = 0.0
        for index, token in enumerate(order):
            if allowed(int(token)):
                return int(token), float(np.log(1.0 - seen)), index + 1
            seen += probs[index]
        return -1, -np.inf, len(order)

    monkeypatch.setattr(constrained, "rejection_step", improper)
    out = _run(model, 6000, 1, seed=0)
    draws, weights = _weighted_cells(out, exact)
    total = sum(exact.values())
    assert abs(weights.mean() - total) > 6 * weights.std(ddof=1) / np.sqrt(len(weights))


@pytest.mark.slow
def test_the_evidence_with_resampling_is_unbiased(model):
    exact = enumerate_constrained(model, TOKENIZER.encode("a"))
    out = _run(model, 1500, 4, seed=1, ess_threshold=1.0)
    z_hat = np.exp(out.log_evidence)
    total = sum(exact.values())
    assert abs(z_hat.mean() - total) < 4 * z_hat.std(ddof=1) / np.sqrt(len(z_hat))


def test_a_constraint_that_rejects_everything_is_named(model):
    with pytest.raises(ValueError, match=r"rejects every token .* problem 0 at token 0: no "
                                         r"continuation of ''"):
        prompt = "a"
        step = P.Settings(num_particles=2, temperature=1.0, stop_ids=(), end_ids=(END,),
                          max_step_tokens=LIMIT, max_steps=1)
        job = Job(lm=model, reward=None, prompts=[prompt], prompt_ids=np.zeros((1, 1), np.int32),
                  prompt_lengths=np.ones(1, np.int32), context=None, max_length=8, step=step,
                  decode=TOKENIZER.decode, allow_collapse=False, on_step=None, labels=["0"])
        constrained.constrained_smc(jax.random.split(jax.random.key(0), 1), job,
                                    constraint=lambda prompt, text: False)
