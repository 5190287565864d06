"""Normalizing-flow variational inference: ``ppl.infer(model, method="flow_vi", key=...)``.

Maths. For a flow ``q_lambda`` on the unconstrained space, maximise

    ELBO(lambda) = E_{eps ~ N(0, I)} [log p(T_lambda(eps)) - log q_lambda(T_lambda(eps))]
                 <= log Z,

with the reparameterisation gradient (Kingma & Welling 2014; Rezende & Mohamed 2015), or
its stick-the-landing variant, which drops the score term ``grad_lambda log q_lambda(z)`` at
fixed ``z`` (Roeder, Wu & Duvenaud 2017). The flow lives in whitened coordinates ``u`` with
``z = m + W u`` (see :mod:`ppl.inference.vi.flows`): by default from a Laplace approximation
at the mode. Where the mode search fails (a density with no proper mode, such as Neal's
funnel or a centred hierarchical model, where it runs off towards a zero scale and the
curvature is clipped), the candidates Laplace and robust prior-scale whitening are each
trained for one chunk, and the one with the higher pilot ELBO (a fair comparison: the ELBO
does not depend on the coordinates) continues. After
fitting, ``S`` draws with log weights ``log w = log p(z) - log q(z)`` give the PSIS k-hat
(Yao et al. 2018), the importance-sampling ESS and ``log Z ~ log mean w``.

The optimiser is optax Adam with a warm-up + cosine schedule and gradient clipping. Steps
run in chunks of a jitted ``lax.scan`` (the model is an argument of the compiled program:
new data of the same shapes reuse it); the progress bar and the convergence check run
between chunks. A non-finite ELBO or gradient stops the fit with the step number and the
last good state (:class:`NonFiniteError`).

References:
    Rezende & Mohamed (2015), Variational Inference with Normalizing Flows, ICML.
    Roeder, Wu & Duvenaud (2017), Sticking the Landing, NeurIPS.
    Yao, Vehtari, Simpson & Gelman (2018), Yes, but did it work?: Evaluating Variational
    Inference, ICML.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax
from ppl.inference.smc import resampling as _resampling
from ppl.inference.vi import flows as _flows
from ppl.inference.vi.psis import KHAT_THRESHOLD, ImportanceDiagnostics, importance_diagnostics

from ppl.infer import as_key
from ppl.model import AbstractModel
from ppl.posterior import Posterior
from ppl.progress import ProgressBar
from ppl.validation import check_count

__all__ = ["FlowVIState", "FlowVIInfo", "FlowVIResult", "NonFiniteError", "elbo", "init",
           "build_step", "fit", "fit_flow_vi", "load_flow"]


class FlowVIState(NamedTuple):
    """Optimisation state.

    Attributes:
        params: the trainable leaves of the flow (``eqx.partition``).
        opt_state: optax state.
        step: number of steps taken.
    """

    params: Any
    opt_state: Any
    step: jax.Array


class FlowVIInfo(NamedTuple):
    """Per-step information.

    Attributes:
        elbo: the Monte Carlo ELBO estimate at this step's parameters.
        grad_norm: global norm of the gradient.
        is_finite: whether both were finite (a False step is not applied).
    """

    elbo: jax.Array
    grad_norm: jax.Array
    is_finite: jax.Array


# A step whose ELBO or gradient is not finite is skipped (optax.apply_if_finite does the same):
# a rare draw in a region where the log-density overflows (gp_pois_regr's exp(f) in float32)
# should not end a fit. Training stops at the MAX_NON_FINITE_STEPS-th skipped step.
MAX_NON_FINITE_STEPS = 10


class NonFiniteError(ValueError):
    """The ELBO or its gradient was NaN/inf at ``MAX_NON_FINITE_STEPS`` steps; ``state`` and
    ``flow`` are the last good ones (skipped steps do not change them)."""

    def __init__(self, message, *, step, state=None, flow=None):
        super().__init__(message)
        self.step = step
        self.state = state
        self.flow = flow


def _partition(flow):
    return eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )


def elbo(params, static, model, key, num_samples: int, stick_the_landing: bool = False):
    """Monte Carlo ELBO of the flow ``combine(params, static)`` against ``model``.

    With ``stick_the_landing`` the density of ``q`` is evaluated with stopped parameters
    (its inverse pass is needed: not available for the tanh planar flow).
    """
    q = eqx.combine(params, static)
    if stick_the_landing:
        z = q.sample(key, (num_samples,))
        log_q = eqx.combine(jax.lax.stop_gradient(params), static).log_prob(z)
    else:
        z, log_q = q.sample_and_log_prob(key, (num_samples,))
    log_p = jax.vmap(model.log_density)(z)
    return jnp.mean(log_p - log_q)


def init(params, optimizer: optax.GradientTransformation) -> FlowVIState:
    """The initial state for trainable ``params``."""
    return FlowVIState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def build_step(model, static, optimizer, *, num_samples: int = 16,
               stick_the_landing: bool = False):
    """``step(key, state) -> (state, info)``: one optimiser step on ``-ELBO``.

    A step whose ELBO or gradient is not finite leaves the state unchanged
    (``info.is_finite`` is False); :func:`fit` skips it, up to ``MAX_NON_FINITE_STEPS``.
    """

    def loss_fn(params, key):
        return -elbo(params, static, model, key, num_samples, stick_the_landing)

    def step(key, state: FlowVIState):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = FlowVIState(params, opt_state, state.step + 1)
        new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state)
        return new, FlowVIInfo(-loss, grad_norm, ok)

    return step


class _Settings(NamedTuple):
    num_steps: int
    num_samples: int
    learning_rate: float
    stick_the_landing: bool
    chunk_size: int


def _optimizer(settings: _Settings):
    warmup = max(1, min(100, settings.num_steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=settings.learning_rate / 10, peak_value=settings.learning_rate,
        warmup_steps=warmup, decay_steps=max(settings.num_steps, warmup + 1),
        end_value=settings.learning_rate / 100,
    )
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))


@eqx.filter_jit
def _init_state(flow, settings: _Settings):
    params, _ = _partition(flow)
    return init(params, _optimizer(settings))


@eqx.filter_jit
def _train_chunk(flow, state, model, key, failures_left, settings: _Settings):
    """``settings.chunk_size`` steps; non-finite steps are skipped until ``failures_left`` of
    them have been, then the state freezes. Returns the state, the infos and which steps
    were counted as skipped."""
    _, static = _partition(flow)
    step = build_step(model, static, _optimizer(settings), num_samples=settings.num_samples,
                      stick_the_landing=settings.stick_the_landing)

    def body(carry, key):
        state, left = carry
        frozen = left <= 0
        new, info = step(key, state)  # a non-finite step returns ``state`` unchanged
        state = jax.tree.map(lambda a, b: jnp.where(frozen, b, a), new, state)
        skipped = ~info.is_finite & ~frozen
        return (state, left - skipped.astype(left.dtype)), (info, skipped)

    keys = jax.random.split(key, settings.chunk_size)
    (state, _), (info, skipped) = jax.lax.scan(body, (state, failures_left), keys)
    return state, info, skipped


@eqx.filter_jit
def _draws(q, model, key, num_draws: int):
    z, log_q = q.sample_and_log_prob(key, (num_draws,))
    log_p = jax.vmap(model.log_density)(z)
    return z, log_p - log_q


@eqx.filter_jit
def _constrain(model, z):
    return jax.vmap(model.to_constrained)(z)


@dataclasses.dataclass
class FlowVIResult:
    """A fitted flow and what was learned fitting it.

    Attributes:
        flow: the fitted ``q(z)`` on the unconstrained space (a flowjax distribution:
            ``flow.sample(key, (n,))``, ``flow.log_prob(z)``).
        elbo_trace: the ELBO estimate at every step (NaN at skipped steps).
        laplace: the Laplace approximation (None when not computed).
        flow_settings: what :func:`~ppl.inference.vi.flows.make_flow` was given.
        settings: the training settings.
        converged: whether the convergence check stopped training early.
        wall_time: seconds spent in :func:`fit`.
        num_gradient_evals: log-density gradients evaluated (Laplace Hessian excluded,
            losing pilot fits included).
        whitening: the whitening used: ``"laplace"``, ``"prior"`` or ``"none"``.
        pilot_elbos: the pilot ELBO of each candidate whitening, when there was a choice.
        num_skipped_steps: steps skipped because their ELBO or gradient was not finite
            (their ``elbo_trace`` entries are NaN).
    """

    flow: Any
    elbo_trace: np.ndarray
    laplace: Any
    flow_settings: dict
    settings: dict
    converged: bool
    wall_time: float
    num_gradient_evals: int
    whitening: str = "laplace"
    pilot_elbos: dict = dataclasses.field(default_factory=dict)
    num_skipped_steps: int = 0

    def sample(self, key, num_draws: int) -> jax.Array:
        """``(num_draws, dim)`` unconstrained draws from ``q``."""
        return self.flow.sample(key, (num_draws,))

    def diagnostics(self, key, model, num_draws: int = 2000) -> ImportanceDiagnostics:
        """PSIS k-hat, IS ESS, IS log-evidence and ELBO from fresh draws."""
        _, log_w = _draws(self.flow, model, key, int(num_draws))
        return importance_diagnostics(np.asarray(log_w))

    def posterior(self, key, model, *, num_draws: int = 2000,
                  importance_resample: bool = True, num_proposals: int | None = None,
                  warn: bool = True) -> Posterior:
        """Draws from ``q`` as a :class:`~ppl.Posterior`, PSIS-resampled by default (see
        :func:`fit_flow_vi`)."""
        return _to_posterior(self, key, model, int(num_draws), importance_resample,
                             num_proposals, warn)

    def save(self, path) -> None:
        """Write the flow (a JSON header line + equinox-serialised leaves)."""
        header = {"format": "ppl.flow_vi/1", "flow_settings": self.flow_settings}
        with open(path, "wb") as f:
            f.write((json.dumps(header) + "\n").encode())
            eqx.tree_serialise_leaves(f, self.flow)


def _skeleton(flow_settings: dict):
    dim = int(flow_settings["dim"])
    # Files written before the Student-t base have no "base": theirs was normal.
    settings = {"base": "normal", **{k: v for k, v in flow_settings.items() if k != "dim"}}
    flow = _flows.make_flow(jax.random.key(0), dim, **settings)
    return _flows.whitened_flow(flow, _flows.Whiten(jnp.zeros(dim), jnp.eye(dim)))


def load_flow(path, like=None):
    """Load a flow written by :meth:`FlowVIResult.save`.

    Args:
        path: the file.
        like: optional flow of the same structure to fill (default: rebuilt from the
            settings stored in the file).
    """
    with open(path, "rb") as f:
        header = json.loads(f.readline().decode())
        if header.get("format") != "ppl.flow_vi/1":
            raise ValueError(f"Expected a ppl flow file, got header {header!r}.")
        skeleton = like if like is not None else _skeleton(header["flow_settings"])
        return eqx.tree_deserialise_leaves(f, skeleton)




def fit(
    key,
    model: AbstractModel,
    *,
    flow: str = "maf",
    num_layers: int = 4,
    width: int = 32,
    depth: int = 1,
    base: str = "normal",
    num_steps: int = 4000,
    num_samples: int = 16,
    learning_rate: float = 1e-2,
    stick_the_landing: bool = False,
    whiten: bool | str = "auto",
    convergence_tol: float | None = 0.01,
    chunk_size: int = 200,
    progress_bar: bool | None = None,
) -> FlowVIResult:
    """Fit a normalizing flow to ``model``'s unconstrained posterior by maximising the ELBO.

    Args:
        key: PRNG key (or an int seed).
        model: a ppl Model with continuous latents.
        flow: ``"maf"`` (default), ``"spline"``, ``"bnaf"`` or ``"planar"``.
        num_layers, width, depth: flow architecture (see ``flows.make_flow``).
        base: the flow's base distribution, ``"normal"`` (default) or ``"student_t"``
            (heavier tails, learned; see ``flows.make_flow``).
        num_steps: maximum optimiser steps.
        num_samples: Monte Carlo draws per ELBO estimate.
        learning_rate: peak Adam learning rate (warm-up then cosine decay).
        stick_the_landing: use the stick-the-landing gradient (needs the flow's inverse).
        whiten: the coordinates the flow is fitted in, ``z = m + W u``: ``"auto"``
            (default; True means the same) uses the Laplace approximation when the mode
            search succeeds (finite, positive, unclipped curvature and a vanishing gradient
            at the mode, :meth:`~ppl.inference.vi.flows.Laplace.is_trustworthy`), and
            otherwise picks between Laplace and prior-scale whitening
            (:func:`~ppl.inference.vi.flows.prior_whitening`) by the ELBO of a one-chunk
            pilot fit of each; ``"laplace"`` or ``"prior"`` forces one; ``"none"`` (or
            False) fits on the unconstrained scale as it is.
        convergence_tol: stop when the chunk-mean ELBO improved by less than this for two
            consecutive chunks (after half of ``num_steps``), after one last chunk on the
            learning-rate schedule's tail (its last ``chunk_size`` steps);
            None never stops early.
        chunk_size: steps per compiled chunk (progress and convergence checks between).
        progress_bar: show a progress bar (default: when stderr is a terminal).

    Raises:
        ValueError: bad settings, discrete latents, a log-density that is not finite at
            the start; :class:`NonFiniteError` (a ValueError) when the ELBO or its gradient
            becomes non-finite during training.
    """
    if not isinstance(model, AbstractModel):
        raise TypeError(f"Expected a ppl Model, got {type(model).__name__}.")
    if model.discrete_sites:
        raise ValueError(f"Flow VI needs continuous latents; got discrete site(s) "
                         f"{list(model.discrete_sites)}: marginalise them out in the model.")
    num_steps = check_count("num_steps", num_steps)
    num_samples = check_count("num_samples", num_samples)
    chunk_size = check_count("chunk_size", min(chunk_size, num_steps))
    if not (isinstance(learning_rate, (int, float)) and np.isfinite(learning_rate)
            and learning_rate > 0):
        raise ValueError(f"Expected learning_rate > 0, got {learning_rate!r}.")
    if stick_the_landing and flow == "planar":
        raise ValueError("Expected stick_the_landing=False with flow='planar' (the tanh planar "
                         "flow has no inverse), got True.")
    if isinstance(whiten, bool):
        whiten = "auto" if whiten else "none"
    if whiten not in WHITENINGS:
        raise ValueError(f"Expected whiten in {WHITENINGS} (or a bool), got {whiten!r}.")
    start_time = time.perf_counter()
    lap_key, flow_key, train_key = jax.random.split(as_key(key), 3)
    # The training program draws with JAX's own threefry, not ppl.prng's unrolled one: XLA
    # fuses the 20 unrolled rounds with the normal transform and the ELBO's consumers into
    # loop kernels whose long chain of dependent integer ops sends LLVM's loop vectorizer
    # (jaxlib >= 0.11, in VPlan's onlyFirstLaneUsed) into a search lasting many minutes
    # (bench/vi_compile.py). With jaxlib 0.10.2 the unrolled one saved about 10% here.
    dim = model.dim
    flow_settings = {"dim": dim, "kind": flow, "num_layers": int(num_layers),
                     "width": int(width), "depth": int(depth), "base": base}
    base_flow = _flows.make_flow(flow_key, dim, kind=flow, num_layers=int(num_layers),
                                 width=int(width), depth=int(depth), base=base)
    laplace, candidates = _whitening_candidates(lap_key, model, whiten)
    settings = _Settings(num_steps, num_samples, float(learning_rate), bool(stick_the_landing),
                         chunk_size)
    num_chunks = -(-num_steps // chunk_size)
    show = ProgressBar.wanted(progress_bar)
    trace, chunk_means, converged, pilot_elbos, num_pilot_steps = [], [], False, {}, 0

    def run_chunk(q, state, chunk, skipped_so_far):
        """One compiled chunk; returns (state, ELBOs with NaN at skipped steps, skipped
        count, NonFiniteError or None)."""
        left = MAX_NON_FINITE_STEPS - skipped_so_far
        key_chunk = jax.random.fold_in(train_key, chunk)
        new_state, info, skipped = _train_chunk(q, state, model, key_chunk,
                                                jnp.asarray(left, jnp.int32), settings)
        skipped = np.asarray(skipped)
        error = _non_finite_error(info, skipped, left, new_state, q, chunk, chunk_size)
        elbos = np.where(skipped, np.nan, np.asarray(info.elbo))
        return new_state, elbos, int(skipped.sum()), error

    with ProgressBar(num_chunks * chunk_size if show else 0, desc="flow VI") as bar:
        # Chunk 0: a pilot fit of every candidate whitening; the best one carries on.
        best = None
        for name, (loc, scale) in candidates.items():
            q = _flows.whitened_flow(base_flow, _flows.Whiten(loc, scale))
            new_state, elbos, num_skipped, error = run_chunk(q, _init_state(q, settings), 0, 0)
            num_pilot_steps += chunk_size
            if len(candidates) == 1 and error is not None:
                raise error
            score = (-np.inf if error is not None
                     else float(np.nanmean(elbos[len(elbos) // 2:])))
            pilot_elbos[name] = score
            if best is None or score > best[0]:
                best = (score, name, q, new_state, elbos, num_skipped, error)
        score, whitening, q, state, elbos, num_skipped, error = best
        if error is not None:  # every candidate failed
            raise error
        num_pilot_steps -= chunk_size  # the winner's pilot is its first chunk
        _, static = _partition(q)
        trace.append(elbos)
        chunk_means.append(float(np.nanmean(elbos)))
        bar.update_to(chunk_size)
        for chunk in range(1, num_chunks):
            state, elbos, skipped, error = run_chunk(q, state, chunk, num_skipped)
            if error is not None:
                raise error
            num_skipped += skipped
            trace.append(elbos)
            chunk_means.append(float(np.nanmean(elbos)))
            bar.update_to((chunk + 1) * chunk_size)
            if (convergence_tol is not None and (chunk + 1) * chunk_size >= num_steps // 2
                    and len(chunk_means) >= 3
                    and chunk_means[-1] - chunk_means[-2] < convergence_tol
                    and chunk_means[-2] - chunk_means[-3] < convergence_tol):
                converged = True
                if chunk + 1 < num_chunks:
                    # Polish: one last chunk on the schedule's low-learning-rate tail, so
                    # that stopping early does not leave the noise of a large step.
                    state = state._replace(opt_state=_skip_schedule_to(
                        state.opt_state, (num_chunks - 1) * chunk_size))
                    state, elbos, skipped, error = run_chunk(q, state, num_chunks,
                                                             num_skipped)
                    if error is not None:
                        raise error
                    num_skipped += skipped
                    trace.append(elbos)
                break
    fitted = eqx.combine(state.params, static)
    elbo_trace = np.concatenate(trace)
    return FlowVIResult(
        flow=fitted, elbo_trace=elbo_trace, laplace=laplace, flow_settings=flow_settings,
        settings={**settings._asdict(), "flow": flow, "whiten": whiten,
                  "convergence_tol": convergence_tol},
        converged=converged, wall_time=time.perf_counter() - start_time,
        num_gradient_evals=int((elbo_trace.size + num_pilot_steps) * num_samples),
        whitening=whitening, pilot_elbos=pilot_elbos if len(candidates) > 1 else {},
        num_skipped_steps=num_skipped,
    )


# Draws from q per returned draw when PSIS-resampling (Pathfinder's default ratio is 4).
PROPOSALS_PER_DRAW = 4

WHITENINGS = ("auto", "laplace", "prior", "none")


def _skip_schedule_to(opt_state, count):
    """``opt_state`` with its learning-rate schedule's step counter set to ``count``."""
    def skip(leaf):
        if isinstance(leaf, optax.ScaleByScheduleState):
            return leaf._replace(count=jnp.asarray(count, leaf.count.dtype))
        return leaf

    return jax.tree.map(skip, opt_state,
                        is_leaf=lambda leaf: isinstance(leaf, optax.ScaleByScheduleState))


def _whitening_candidates(key, model, whiten: str):
    """The Laplace approximation (or None) and ``{name: (loc, scale)}`` to try."""
    dim = model.dim
    laplace_key, prior_key = jax.random.split(key)
    laplace, candidates = None, {}
    if whiten in ("auto", "laplace"):
        laplace = _flows.laplace_approximation(laplace_key, model)
        if whiten == "laplace" or laplace.is_trustworthy():
            candidates["laplace"] = (laplace.mode, laplace.scale)
        else:
            if np.all(np.isfinite(np.asarray(laplace.scale))):
                candidates["laplace"] = (laplace.mode, laplace.scale)
            prior = _flows.prior_whitening(prior_key, model)
            if prior is not None:
                candidates["prior"] = prior
    elif whiten == "prior":
        prior = _flows.prior_whitening(prior_key, model)
        if prior is None:
            raise ValueError("Expected a model with a proper prior sampler for whiten='prior', "
                             "got one whose sample_prior fails or is not finite.")
        candidates["prior"] = prior
    if not candidates:
        candidates["none"] = (jnp.zeros(dim), jnp.eye(dim))
    # The Laplace search evaluated its mode already; only other candidates need a program.
    values = {name: (float(laplace.log_density) if name == "laplace"
                     and np.isfinite(float(laplace.whitened_grad_norm))
                     else float(_flows._batch_log_density(model, loc[None])[0]))
              for name, (loc, _) in candidates.items()}
    finite = {name: c for name, c in candidates.items() if np.isfinite(values[name])}
    if not finite:
        raise ValueError(f"Expected a finite log-density and gradient at the starting point, "
                         f"got log-density {values} or a non-finite gradient there.")
    return laplace, finite


def _non_finite_error(info, skipped, left, new_state, q, chunk, chunk_size):
    """The error to raise when this chunk skipped its ``left``-th non-finite step."""
    where = np.flatnonzero(skipped)
    if where.size < left:
        return None
    last = int(where[left - 1])
    bad_step = chunk * chunk_size + last
    elbo_value = np.asarray(info.elbo)[last]
    what = "ELBO" if not np.isfinite(elbo_value) else "ELBO gradient"
    _, static = _partition(q)
    return NonFiniteError(
        f"The {what} became non-finite at step {bad_step} (ELBO {elbo_value}), the "
        f"{MAX_NON_FINITE_STEPS}th non-finite step of this fit; training stopped. Each was "
        "skipped, so the last good state is on this error's .state/.flow. Check the "
        "model's log-density for NaN/inf in the region the flow explores, or lower "
        "learning_rate.",
        step=bad_step, state=new_state, flow=eqx.combine(new_state.params, static),
    )


def _to_posterior(result: FlowVIResult, key, model, num_draws, importance_resample,
                  num_proposals, warn):
    draw_key, resample_key = jax.random.split(key)
    if importance_resample:
        num_proposals = check_count("num_proposals", num_proposals or
                                   PROPOSALS_PER_DRAW * num_draws, num_draws)
    else:
        num_proposals = num_draws
    z, log_w = _draws(result.flow, model, draw_key, num_proposals)
    diag = importance_diagnostics(np.asarray(log_w))
    messages = []
    if diag.khat > KHAT_THRESHOLD:
        messages.append(
            f"PSIS k-hat = {diag.khat:.2f} > {KHAT_THRESHOLD}: the variational approximation "
            "is not to be trusted (its tails are too light or it misses mass); try more "
            "steps, another flow, or NUTS."
        )
    if importance_resample:
        # Systematic resampling: the lowest-variance unbiased scheme (ppl's SMC resampler).
        # It returns indices in order, duplicates side by side; shuffled, the draws are
        # exchangeable and ESS or autocorrelation estimates on them are not fooled.
        systematic_key, shuffle_key = jax.random.split(resample_key)
        idx = _resampling.systematic(systematic_key,
                                     jnp.asarray(diag.smoothed_log_weights), num_draws)
        z = z[jax.random.permutation(shuffle_key, idx)]
        stats = {}  # the resampled draws carry equal weights
    else:
        stats = {"log_weight": np.asarray(log_w)[None],
                 "psis_log_weight": diag.smoothed_log_weights[None]}
    values = _constrain(model, z)
    samples = {k: np.asarray(v)[None] for k, v in values.items()}
    for message in messages:
        if warn:
            warnings.warn(message, RuntimeWarning, stacklevel=4)
    meta = {
        "engine": "flow_vi",
        "settings": {**result.settings, **result.flow_settings, "num_draws": num_draws,
                     "importance_resample": importance_resample,
                     "num_proposals": num_proposals},
        "wall_time": result.wall_time,
        "num_gradient_evals": result.num_gradient_evals,
        "khat": diag.khat,
        "is_ess": diag.ess,
        "elbo": diag.elbo,
        "converged": result.converged,
        "num_skipped_steps": result.num_skipped_steps,
        "whitening": result.whitening,
        "pilot_elbos": result.pilot_elbos,
        "warnings": messages,
    }
    return Posterior(
        samples=samples,
        log_evidence=diag.log_evidence,
        stats=stats,
        history={"elbo": result.elbo_trace},
        meta=meta,
        unconstrained=np.asarray(z)[None],
    )


# ``ppl.infer``'s flow VI refits with a Student-t base when the Gaussian one's k-hat is above
# this (PSIS's "good" region ends at 0.5; 0.7 is where its estimates become unreliable).
RETRY_KHAT = 0.5


def fit_flow_vi(key, model: AbstractModel, *, num_draws: int = 2000,
                importance_resample: bool = True, num_proposals: int | None = None,
                warn: bool = True, **settings) -> Posterior:
    """``ppl.infer(model, method="flow_vi", key=...)``: fit a flow, return draws from it.

    Settings are those of :func:`fit`, plus ``num_draws``, ``importance_resample``,
    ``num_proposals`` and ``warn``; ``base="auto"`` (the default here) fits a Gaussian-based
    flow and, when its k-hat is above :data:`RETRY_KHAT`, a Student-t-based one too, keeping
    the lower k-hat (``meta["base"]``, ``meta["bases_tried"]``); ``"normal"`` or
    ``"student_t"`` fits that one only. By default (``importance_resample=True``) the draws are
    PSIS-resampled, as Pathfinder's are (Zhang et al. 2022): ``num_proposals`` draws from
    ``q`` (default ``4 * num_draws``) are weighted by ``p / q``, the weights Pareto-smoothed,
    and ``num_draws`` of them kept by systematic resampling. This corrects the
    under-dispersion of a reverse-KL fit where the weights can be trusted (k-hat < 0.7); on
    gp_pois_regr the sd of the GP amplitude went from 15-25% too small to 12% too small
    (bench/results/vi.md). ``importance_resample=False`` returns ``num_draws`` plain draws
    from ``q`` with their weights in ``stats``.

    Returns:
        A :class:`~ppl.Posterior` with one chain of ``num_draws`` draws; ``history["elbo"]``
        the ELBO trace; ``meta["khat"]``, ``meta["is_ess"]``, ``meta["elbo"]`` (all from the
        ``num_proposals`` draws); ``log_evidence`` the importance-sampling estimate; without
        resampling, ``stats["log_weight"]`` the raw and ``stats["psis_log_weight"]`` the
        smoothed log weights. k-hat above 0.7 warns.
        Use :func:`fit` to keep the fitted flow (``.flow``, ``.save``).

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> m = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
        >>> post = ppl.infer(m, "flow_vi", key=jax.random.key(0), num_steps=200)
        >>> post.meta["khat"] < 0.7
        True
    """
    num_draws = check_count("num_draws", num_draws, 10)
    fit_key, draw_key = jax.random.split(as_key(key))
    base = settings.pop("base", "auto")
    if base not in ("auto", *_flows.FLOW_BASES):
        raise ValueError(f"Expected base in {('auto', *_flows.FLOW_BASES)}, got {base!r}.")

    def fit_and_draw(base_kind, warn_now):
        result = fit(fit_key, model, base=base_kind, **settings)
        return result.posterior(draw_key, model, num_draws=num_draws,
                                importance_resample=importance_resample,
                                num_proposals=num_proposals, warn=warn_now)

    if base != "auto":
        post = fit_and_draw(base, warn)
        post.meta["base"] = base
        return post
    # A Gaussian base first; where its importance weights are poor (k-hat above
    # RETRY_KHAT), the tails are the usual culprit (a flow keeps its base's tails), and a
    # Student-t base is fitted too; the one with the lower k-hat is kept.
    post = fit_and_draw("normal", False)
    tried = {"normal": float(post.meta["khat"])}
    chosen = "normal"
    if tried["normal"] > RETRY_KHAT:
        heavy = fit_and_draw("student_t", False)
        tried["student_t"] = float(heavy.meta["khat"])
        if tried["student_t"] < tried["normal"]:
            post, chosen = heavy, "student_t"
    for message in post.meta.get("warnings", []) if warn else []:  # the chosen fit's, once
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    post.meta["base"] = chosen
    post.meta["bases_tried"] = tried
    return post


# Where the engine's ``**settings`` go (``ppl.infer`` checks setting names against them).
fit_flow_vi.settings_from = (fit,)
