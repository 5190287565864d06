"""Power sampling against the exactly normalised p^alpha of an enumerable Markov model.

Sequences of at most three tokens over {a, b} (an end token stops one earlier): the
Metropolis-Hastings kernel started from exact draws of pi ∝ p^alpha returns exact draws of
pi, and the chain started from tempered samples reaches pi; the tempered samples themselves
(what low-temperature sampling gives) are not pi, the negative control.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.llm import population as P
from ppl.inference.llm import power
from ppl.inference.llm.job import Job
from ppl.models.lm import toy
from scipy import stats

TOKENIZER = toy.CharTokenizer("ab")
END = TOKENIZER.end_id
LIMIT, ALPHA, GROUPS = 3, 3.0, 4000


@pytest.fixture(scope="module")
def model():
    return toy.random_markov_model(jax.random.key(11), vocab_size=TOKENIZER.vocab_size,
                                   max_length=8, end_ids=(END,), scale=1.2)


def enumerate_power(model, prompt):
    """Every sequence of the space with its p^alpha, normalised."""
    log_probs = np.asarray(jax.nn.log_softmax(model.logits, axis=-1))
    start = len(prompt) - 1
    out = {}
    for length in range(1, LIMIT + 1):
        for seq in itertools.product(range(TOKENIZER.vocab_size), repeat=length):
            if END in seq[:-1] or (length < LIMIT and seq[-1] != END):
                continue
            pos, prev, lp = start, prompt[-1], 0.0
            for t in seq:
                lp += log_probs[pos, prev, t]
                pos, prev = pos + 1, t
            out[seq] = lp
    keys = list(out)
    log_target = ALPHA * np.array([out[k] for k in keys])
    target = np.exp(log_target - log_target.max())
    return keys, target / target.sum()


def _job(model, prompt, groups):
    ids = np.asarray([TOKENIZER.encode(prompt)] * groups, np.int32)
    step = P.Settings(num_particles=1, temperature=1.0 / ALPHA, stop_ids=(), end_ids=(END,),
                      max_step_tokens=LIMIT, max_steps=1)
    return Job(lm=model, reward=None, prompts=[prompt] * groups, prompt_ids=ids,
               prompt_lengths=np.full(groups, ids.shape[1], np.int32), context=None,
               max_length=8, step=step, decode=TOKENIZER.decode, allow_collapse=False,
               on_step=None, labels=[str(g) for g in range(groups)])


def _sequences(batch):
    return [tuple(int(t) for t in batch.tokens[r, : batch.length[r]])
            for r in range(len(batch.length))]


def _chi_square(draws, keys, target):
    index = {k: i for i, k in enumerate(keys)}
    counts = np.bincount([index[d] for d in draws], minlength=len(keys))
    expected = target * len(draws)
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expect = np.append(expected[big], expected[~big].sum())
    return np.sum((observed - expect) ** 2 / expect), stats.chi2.ppf(0.999, len(observed) - 1)


def _keys(seed, groups):
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(groups))


@pytest.mark.slow
def test_the_kernel_leaves_p_to_the_alpha_invariant(model):
    prompt = "a"
    keys, target = enumerate_power(model, TOKENIZER.encode(prompt))
    rng = np.random.default_rng(0)
    start = [keys[i] for i in rng.choice(len(keys), size=GROUPS, p=target)]
    job = _job(model, prompt, GROUPS)
    width = job.max_length
    # Chains holding the exact draws: their cache, and their tokens' log-probabilities.
    state = power._init(model, jnp.asarray(job.prompt_ids), jnp.asarray(job.prompt_lengths),
                        width, jnp.arange(GROUPS))
    tokens = np.zeros((GROUPS, width), np.int32)
    lengths = np.array([len(s) for s in start], np.int32)
    for g, seq in enumerate(start):
        tokens[g, : len(seq)] = seq
    state, forced = model.force_step(state, jnp.asarray(tokens[:, :LIMIT]), jnp.asarray(lengths),
                                     temperature=1.0 / ALPHA)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, width - LIMIT)))  # noqa: E731
    chains = power.Chains(state, jnp.asarray(tokens), jnp.asarray(lengths),
                          pad(forced.base_log_probs), pad(forced.proposal_log_probs),
                          jnp.asarray([s[-1] == END for s in start]),
                          jnp.zeros(GROUPS, jnp.int32))
    static = power._Static(1.0 / ALPHA, ALPHA, (END,), LIMIT)
    prompt_lengths = jnp.asarray(job.prompt_lengths)
    prompt_last = jnp.asarray(job.prompt_ids)[:, -1]
    chains, _ = power._mh_step(_keys(1, GROUPS), model, chains, prompt_lengths, prompt_last,
                               jnp.int32(LIMIT), static)
    host = jax.device_get(chains._replace(lm=None))
    moved = np.mean(host.accepted)
    assert 0.1 < moved < 0.95  # the kernel does move
    draws = [tuple(int(t) for t in host.tokens[r, : host.length[r]]) for r in range(GROUPS)]
    statistic, limit = _chi_square(draws, keys, target)
    assert statistic < limit, (statistic, limit)


@pytest.mark.slow
def test_the_chain_reaches_p_to_the_alpha_and_tempered_sampling_does_not(model):
    prompt = "a"
    keys, target = enumerate_power(model, TOKENIZER.encode(prompt))
    job = _job(model, prompt, GROUPS)
    chained = power.power_sampling(_keys(2, GROUPS), job, alpha=ALPHA, block_tokens=LIMIT,
                                   mcmc_steps=12)
    statistic, limit = _chi_square(_sequences(chained.batch), keys, target)
    assert statistic < limit, (statistic, limit)
    tempered = power.power_sampling(_keys(3, GROUPS), job, alpha=ALPHA, block_tokens=LIMIT,
                                    mcmc_steps=0)
    statistic, limit = _chi_square(_sequences(tempered.batch), keys, target)
    assert statistic > limit, (statistic, limit)


def test_bad_settings_are_named(model):
    job = _job(model, "a", 2)
    with pytest.raises(ValueError, match="alpha > 0"):
        power.power_sampling(_keys(0, 2), job, alpha=0.0)
    with pytest.raises(ValueError, match="block_tokens a positive int"):
        power.power_sampling(_keys(0, 2), job, block_tokens=0)
