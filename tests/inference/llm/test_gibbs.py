"""Particle Gibbs on an enumerable case: a tiny Markov LM whose traces can be listed.

One conditional-SMC sweep started from an exact draw of the target must return an exact
draw of the target (the kernel leaves it invariant), whatever the number of particles; the
same sweep without the retained trace (a plain filter's single draw) is biased at N = 3,
the negative control. The target is the base LM (temperature 1) times the final reward,
sampled with the proposal at temperature 0.8, so the base-minus-proposal correction of the
weights is under test too.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.llm import gibbs
from ppl.inference.llm import population as P
from ppl.inference.llm.job import Job
from ppl.models.lm import toy
from scipy import stats

from ppl.reward_model import HostReward

TOKENIZER = toy.CharTokenizer("ab\n")
END = TOKENIZER.end_id
STOP = TOKENIZER.characters.index("\n")
MAX_STEP_TOKENS, MAX_STEPS = 2, 2


def reward_of(text: str) -> float:
    return 0.05 + 0.9 * min(1.0, text.count("b") / 2) * (0.4 if "\n" in text else 1.0)


def enumerate_target(model, prompt_ids):
    """Every trace (a tuple of steps) with its probability under the base LM and the step
    rules of the filter, times the reward of its text."""
    log_probs = np.asarray(jax.nn.log_softmax(model.logits, axis=-1))
    traces = {}

    def steps_from(position, last, steps, weight):
        if len(steps) == MAX_STEPS:
            traces[tuple(steps)] = weight
            return
        for length in range(1, MAX_STEP_TOKENS + 1):
            for step in itertools.product(range(TOKENIZER.vocab_size), repeat=length):
                if any(t in (STOP, END) for t in step[:-1]):
                    continue  # a step ends at its first stop or end token
                p, pos, prev = weight, position, last
                for token in step:
                    p *= np.exp(log_probs[pos, prev, token])
                    pos, prev = pos + 1, token
                ended = step[-1] == END
                runaway = length == MAX_STEP_TOKENS and step[-1] not in (STOP, END)
                short = length < MAX_STEP_TOKENS and step[-1] not in (STOP, END)
                if short:
                    continue  # it would have gone on
                if ended or runaway:
                    traces[tuple(steps) + (step,)] = p
                else:
                    steps_from(pos, prev, [*steps, step], p)

    steps_from(len(prompt_ids) - 1, prompt_ids[-1], [], 1.0)
    keys = list(traces)
    text = lambda trace: TOKENIZER.decode([t for s in trace for t in s])  # noqa: E731
    q = np.array([traces[k] for k in keys])
    assert abs(q.sum() - 1) < 1e-5
    # A trace's score is the reward after its last step with text; a trace with none (an
    # end token at once) keeps the score every prefix starts with, 1.
    target = q * np.array([reward_of(text(k)) if text(k) else 1.0 for k in keys])
    return keys, target / target.sum()


def _sweep(model, prompt, references, num_particles, seed):
    groups = len(references) if references is not None else 4000
    ids = np.asarray([TOKENIZER.encode(prompt)] * groups, np.int32)
    settings = P.Settings(num_particles=num_particles, temperature=0.8, stop_ids=(STOP,),
                          end_ids=(END,), max_step_tokens=MAX_STEP_TOKENS, max_steps=MAX_STEPS,
                          potential="increment", target="base")
    job = Job(lm=model, reward=HostReward(lambda p, t: [reward_of(x) for x in t]),
              prompts=[prompt] * groups, prompt_ids=ids,
              prompt_lengths=np.full(groups, ids.shape[1], np.int32), context=None,
              max_length=16, step=settings, decode=TOKENIZER.decode, allow_collapse=False,
              on_step=None, labels=[str(g) for g in range(groups)])
    reference = None if references is None else gibbs.reference_from_steps(references, settings)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(groups))
    batch, rows = gibbs.conditional_sweep(keys, job, settings, reference)
    return batch, rows


def _chi_square(draws, keys, target):
    index = {k: i for i, k in enumerate(keys)}
    counts = np.bincount([index[d] for d in draws], minlength=len(keys))
    expected = target * len(draws)
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expect = np.append(expected[big], expected[~big].sum())
    statistic = np.sum((observed - expect) ** 2 / expect)
    return statistic, stats.chi2.ppf(0.999, len(observed) - 1)


@pytest.mark.slow
def test_conditional_sweep_leaves_the_target_invariant_and_keeps_its_reference():
    model = toy.random_markov_model(jax.random.key(3), vocab_size=TOKENIZER.vocab_size,
                                    max_length=16, end_ids=(END,), scale=1.0)
    prompt = "a"
    keys, target = enumerate_target(model, TOKENIZER.encode(prompt))
    assert len(keys) > 20
    rng = np.random.default_rng(0)
    start = [keys[i] for i in rng.choice(len(keys), size=4000, p=target)]
    batch, rows = _sweep(model, prompt, [list(map(list, t)) for t in start], 3, seed=1)
    # Slot 0 of every group replayed its reference exactly.
    for g in range(0, 4000, 97):
        assert tuple(map(tuple, gibbs.steps_of(batch, g * 3))) == start[g]
    new = [tuple(map(tuple, gibbs.steps_of(batch, int(r)))) for r in rows]
    statistic, limit = _chi_square(new, keys, target)
    assert statistic < limit, (statistic, limit)
    # Negative control: one draw from a plain 3-particle filter is not a draw of the target.
    batch, rows = _sweep(model, prompt, None, 3, seed=2)
    plain = [tuple(map(tuple, gibbs.steps_of(batch, int(r)))) for r in rows]
    statistic, limit = _chi_square(plain, keys, target)
    assert statistic > limit, (statistic, limit)
