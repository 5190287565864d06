"""Training a distribution transformer on a model family, and the trained :class:`Amortizer`.

Maths. Amortized neural posterior estimation (Papamakarios & Murray 2016; Whittle et al.
2025): minimise over the network ``q_phi``

    L(phi) = E_{prior ~ H} E_{theta ~ prior} E_{x ~ p(x | theta)} [-log q_phi(theta | prior, x)],

which equals ``E[KL(p(theta | prior, x) || q_phi(theta | prior, x))]`` plus a constant, so its
minimiser is the exact posterior for every prior in the support of the hyper-distribution
``H``. Every step draws a fresh batch of (prior, theta, data) from the family's simulator:
there is no fixed training set to overfit.

The optimiser is optax AdamW with a linear warm-up and cosine decay of the learning rate and
gradient clipping by global norm. Steps run in chunks of a jitted ``lax.scan``; the step
``s`` uses the key ``fold_in(key, s)``, so a run resumed from a checkpoint draws the same
batches as an uninterrupted one and ends with the same weights. A step whose loss or
gradient is not finite is skipped (training stops after ``MAX_NON_FINITE_STEPS`` of them).

Checkpoints (:meth:`Amortizer.save`): ``weights.eqx`` (``eqx.tree_serialise_leaves``) and
``amortizer.json`` beside it, holding the family (kind and settings), the architecture (with
its standardisation constants) and the training settings and record; during training also
``train_state.eqx`` (optimiser state), removed when training completes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ppl.infer import as_key
from ppl.progress import ProgressBar
from ppl.validation import check_count

from .families import AbstractFamily, family_from_json, family_names, family_to_json, get_family
from .gmm import GaussianMixture
from .transformer import (
    DistributionTransformer,
    TransformerConfig,
    data_standardization,
    num_parameters,
)

__all__ = ["TrainingSettings", "TrainState", "TrainInfo", "Amortizer",
           "PriorOutsideTrainingWarning", "make_config", "build_model", "train", "checkpoint_path",
           "load_pretrained", "ARCHITECTURE_DEFAULTS", "FORMAT"]

FORMAT = "ppl.amortizer/1"
CONFIG_FILE = "amortizer.json"
WEIGHTS_FILE = "weights.eqx"
TRAIN_STATE_FILE = "train_state.eqx"
MAX_NON_FINITE_STEPS = 10
ARCHITECTURE_DEFAULTS = {"width": 64, "depth": 2, "num_heads": 4, "mlp_width": 128,
                         "head": "site"}


class PriorOutsideTrainingWarning(UserWarning):
    """A prior outside the support of the hyper-distribution the amortizer was trained on."""


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """Optimiser and schedule.

    Attributes:
        steps: optimiser steps.
        batch_size: simulated (prior, theta, data) examples per step.
        learning_rate: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: linear warm-up from 0 to ``learning_rate``.
        final_learning_rate: the learning rate at the end of the cosine decay, as a
            fraction of ``learning_rate``.
        clip_norm: gradient clipping by global norm.
        chunk_size: steps per compiled chunk (progress and checkpoints between chunks).
    """

    steps: int
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    final_learning_rate: float = 0.02
    clip_norm: float = 1.0
    chunk_size: int = 100

    def __post_init__(self):
        for name in ("steps", "batch_size", "chunk_size"):
            check_count(name, getattr(self, name))
        check_count("warmup_steps", self.warmup_steps, 0)
        for name in ("learning_rate", "clip_norm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"Expected {name} > 0, got {value!r}.")
        for name in ("weight_decay", "final_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
                raise ValueError(f"Expected {name} >= 0, got {value!r}.")

    def optimizer(self) -> optax.GradientTransformation:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, self.learning_rate, warmup_steps=min(self.warmup_steps, self.steps - 1),
            decay_steps=self.steps, end_value=self.learning_rate * self.final_learning_rate)
        return optax.chain(optax.clip_by_global_norm(self.clip_norm),
                           optax.adamw(schedule, weight_decay=self.weight_decay))


class TrainState(NamedTuple):
    """Optimisation state.

    Attributes:
        params: the trainable leaves of the network (``eqx.partition``).
        opt_state: optax state.
        step: steps taken.
        num_skipped: steps skipped for a non-finite loss or gradient.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    num_skipped: jax.Array


class TrainInfo(NamedTuple):
    """Per-step information.

    Attributes:
        loss: the batch's mean negative log posterior density of the true ``theta``.
        grad_norm: global norm of the gradient.
        applied: whether the step was applied (finite, and within ``steps``).
    """

    loss: jax.Array
    grad_norm: jax.Array
    applied: jax.Array


def make_config(family: AbstractFamily, **hyperparameters) -> TransformerConfig:
    """The architecture for ``family`` (standardisation constants computed from it)."""
    unknown = set(hyperparameters) - set(ARCHITECTURE_DEFAULTS)
    if unknown:
        raise ValueError(f"Expected architecture settings among {sorted(ARCHITECTURE_DEFAULTS)}"
                         f", got {sorted(unknown)}.")
    theta_loc, theta_scale = family.hyperprior.standardization()
    data_loc, data_scale = data_standardization(family)
    return TransformerConfig(
        dim=family.dim, data_dim=family.data_dim, max_points=family.max_points,
        theta_loc=(round(theta_loc, 6),) * family.dim,
        theta_scale=(round(theta_scale, 6),) * family.dim,
        data_loc=data_loc, data_scale=data_scale,
        **{**ARCHITECTURE_DEFAULTS, **hyperparameters})


def loss_fn(params, static, family: AbstractFamily, key, batch_size: int):
    """Mean ``-log q(theta | prior, data)`` over a fresh simulated batch."""
    model = eqx.combine(params, static)
    prior, theta, data, mask = jax.vmap(family.sample_example)(jax.random.split(key, batch_size))
    posterior = jax.vmap(model)(prior, data, mask)
    return -jnp.mean(jax.vmap(lambda q, t: q.log_prob(t))(posterior, theta))


@eqx.filter_jit
def _train_chunk(state: TrainState, static, family, settings: TrainingSettings, key):
    optimizer = settings.optimizer()

    def step(state, _):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(
            state.params, static, family, jax.random.fold_in(key, state.step),
            settings.batch_size)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = eqx.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        applied = finite & (state.step < settings.steps)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)
        new_state = TrainState(
            keep(params, state.params), keep(opt_state, state.opt_state),
            state.step + jnp.where(state.step < settings.steps, 1, 0),
            state.num_skipped + jnp.where(~finite & (state.step < settings.steps), 1, 0))
        return new_state, TrainInfo(loss, grad_norm, applied)

    return jax.lax.scan(step, state, length=settings.chunk_size)


def _key_data(key) -> list[int]:
    return np.asarray(jax.random.key_data(key)).reshape(-1).tolist()


def _write_atomic(path: Path, write) -> None:
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _differences(expected: dict, got: dict) -> list[str]:
    keys = sorted(set(expected) | set(got))
    return [f"{key}: {expected.get(key)!r} vs {got.get(key)!r}" for key in keys
            if expected.get(key) != got.get(key)]


def _check_resume(record, family, config, settings, key_data, directory):
    """Refuse to resume a run with other settings, naming what differs."""
    wanted = {"family": family_to_json(family), "architecture": config.to_json(),
              "settings": dataclasses.asdict(settings), "key": key_data}
    got = {"family": record.get("family"), "architecture": record.get("architecture"),
           "settings": record.get("training", {}).get("settings"),
           "key": record.get("training", {}).get("key")}
    for what in wanted:
        if wanted[what] != got[what]:
            detail = (_differences(wanted[what], got[what] or {})
                      if isinstance(wanted[what], dict) else [f"{wanted[what]} vs {got[what]}"])
            raise ValueError(f"Expected the checkpoint in {directory} to continue this run, got "
                             f"one with another {what} (this run vs checkpoint: "
                             f"{'; '.join(detail)}). Use another checkpoint_dir or "
                             f"resume=False.")


def train(
    family: str | AbstractFamily,
    *,
    key,
    steps: int,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-4,
    warmup_steps: int = 200,
    final_learning_rate: float = 0.02,
    clip_norm: float = 1.0,
    chunk_size: int = 100,
    architecture: dict[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    progress_bar: bool | None = None,
    log_fn=None,
) -> Amortizer:
    """Train a distribution transformer on simulations from ``family``.

    Args:
        family: a family or its registered name.
        key: PRNG key (or an int seed): the initial weights and every batch.
        steps: optimiser steps.
        batch_size: simulated data sets per step.
        learning_rate, weight_decay, warmup_steps, final_learning_rate, clip_norm: AdamW
            with warm-up and cosine decay, gradient clipping (:class:`TrainingSettings`).
        chunk_size: steps per compiled chunk.
        architecture: overrides of :data:`ARCHITECTURE_DEFAULTS` (``width``, ``depth``,
            ``num_heads``, ``mlp_width``, ``head``).
        checkpoint_dir: where to save the training state every ``checkpoint_every`` steps
            and the trained amortizer at the end (None: nowhere).
        checkpoint_every: steps between checkpoints (rounded up to whole chunks).
        resume: continue from the state in ``checkpoint_dir`` when there is one (it must
            come from a run with the same family, architecture, settings and key).
        progress_bar: show a progress bar (default: when stderr is a terminal).
        log_fn: called with one line of text after every chunk (e.g. ``print``).

    Returns:
        The trained :class:`Amortizer`.

    Raises:
        ValueError: bad settings; a checkpoint from another run; a loss or gradient that is
            not finite at ``MAX_NON_FINITE_STEPS`` steps.
    """
    family = get_family(family)
    settings = TrainingSettings(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        weight_decay=weight_decay, warmup_steps=warmup_steps,
        final_learning_rate=final_learning_rate, clip_norm=clip_norm,
        chunk_size=min(chunk_size, steps))
    check_count("checkpoint_every", checkpoint_every)
    key = as_key(key)
    key_data = _key_data(key)
    config = make_config(family, **(architecture or {}))
    init_key, train_key = jax.random.split(key)
    model = build_model(config, init_key)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = TrainState(params, settings.optimizer().init(params), jnp.asarray(0, jnp.int32),
                       jnp.asarray(0, jnp.int32))
    record = {"settings": dataclasses.asdict(settings), "key": key_data, "completed_steps": 0,
              "loss_trace": [], "wall_time": 0.0, "num_skipped_steps": 0}
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if directory is not None and resume and (directory / CONFIG_FILE).exists():
        stored = json.loads((directory / CONFIG_FILE).read_text())
        _check_resume(stored, family, config, settings, key_data, directory)
        record = stored["training"]
        if record["completed_steps"] >= steps:
            return Amortizer.load(directory, family=family, architecture=config)
        model = eqx.tree_deserialise_leaves(directory / WEIGHTS_FILE, model)
        params, _ = eqx.partition(model, eqx.is_inexact_array)
        if not (directory / TRAIN_STATE_FILE).exists():
            raise ValueError(f"Expected {directory / TRAIN_STATE_FILE} to resume from step "
                             f"{record['completed_steps']}, got no such file.")
        opt_state, saved_step = eqx.tree_deserialise_leaves(directory / TRAIN_STATE_FILE,
                                                            (state.opt_state, state.step))
        if int(saved_step) != record["completed_steps"]:
            raise ValueError(f"Expected the optimiser state in {directory} at step "
                             f"{record['completed_steps']} (as {CONFIG_FILE} says), got step "
                             f"{int(saved_step)}: an interrupted save. Use resume=False.")
        state = TrainState(params, opt_state, jnp.asarray(record["completed_steps"], jnp.int32),
                           jnp.asarray(record["num_skipped_steps"], jnp.int32))
    start_time = time.perf_counter()
    previous_wall = record["wall_time"]
    show = ProgressBar.wanted(progress_bar)
    step = int(state.step)
    last_saved = step
    with ProgressBar(steps if show else 0, desc=f"amortize {family.name}") as bar:
        bar.update_to(step)
        while step < steps:
            state, info = _train_chunk(state, static, family, settings, train_key)
            applied = np.asarray(info.applied)
            losses = np.asarray(info.loss)[applied]
            step = int(state.step)
            num_skipped = int(state.num_skipped)
            if num_skipped >= MAX_NON_FINITE_STEPS:
                raise ValueError(f"Expected a finite loss and gradient, got non-finite values "
                                 f"at {num_skipped} steps (by step {step}).")
            chunk_loss = float(np.mean(losses)) if losses.size else float("nan")
            record["loss_trace"].append(chunk_loss)
            record["completed_steps"] = step
            record["num_skipped_steps"] = num_skipped
            record["wall_time"] = previous_wall + time.perf_counter() - start_time
            bar.update_to(step, desc=f"amortize {family.name} loss {chunk_loss:.3f}")
            if directory is not None and (step >= steps or step - last_saved >= checkpoint_every):
                # The optimiser state first and amortizer.json last: the JSON's step count
                # is what a resumed run trusts, and the state file repeats it.
                directory.mkdir(parents=True, exist_ok=True)
                if step < steps:
                    saved = (state.opt_state, state.step)
                    _write_atomic(directory / TRAIN_STATE_FILE,
                                  lambda p, saved=saved: eqx.tree_serialise_leaves(p, saved))
                Amortizer(eqx.combine(state.params, static), family, dict(record)).save(directory)
                last_saved = step
            if log_fn is not None:
                log_fn(f"step {step}/{steps} loss {chunk_loss:.4f} "
                       f"grad_norm {float(np.mean(np.asarray(info.grad_norm))):.3g} "
                       f"wall {record['wall_time']:.1f}s")
    model = eqx.combine(state.params, static)
    amortizer = Amortizer(model, family, record)
    if directory is not None:
        (directory / TRAIN_STATE_FILE).unlink(missing_ok=True)
    return amortizer


@eqx.filter_jit
def _posterior_shared_prior(model, prior, data, mask):
    return jax.vmap(model, in_axes=(None, 0, 0))(prior, data, mask)


@eqx.filter_jit
def _posterior_batched_prior(model, prior, data, mask):
    return jax.vmap(model)(prior, data, mask)


class Amortizer:
    """A trained distribution transformer for one family: ``posterior(data, mask, prior)``.

    Attributes:
        model: the :class:`~ppl.inference.amortized.transformer.DistributionTransformer`.
        family: the family it was trained on.
        training: the training settings and record (steps, loss trace, wall time, key).
    """

    def __init__(self, model: DistributionTransformer, family: AbstractFamily,
                 training: dict[str, Any] | None = None):
        if not isinstance(model, DistributionTransformer):
            raise ValueError(f"Expected a DistributionTransformer, got {type(model).__name__}.")
        if model.config.dim != family.dim or model.config.data_dim != family.data_dim:
            raise ValueError(f"Expected a network for {family.dim} parameters and "
                             f"{family.data_dim} numbers per point (family {family.name!r}), "
                             f"got {model.config.dim} and {model.config.data_dim}.")
        self.model = model
        self.family = family
        self.training = dict(training or {})

    @property
    def config(self) -> TransformerConfig:
        return self.model.config

    def __repr__(self) -> str:
        return (f"Amortizer(family={self.family.name!r}, "
                f"architecture={self.config.hyperparameters()}, "
                f"steps={self.training.get('completed_steps')})")

    def check_prior(self, prior: GaussianMixture, *, warn: bool = True) -> list[str]:
        """Where ``prior`` lies outside the training hyper-distribution's support.

        The network was trained on priors from ``family.hyperprior``; outside its ranges
        (more components, means, scales or correlations beyond the bounds) the posterior is
        an extrapolation and may be inaccurate.

        Args:
            prior: one mixture or a batch.
            warn: issue a :class:`PriorOutsideTrainingWarning` when there is a problem.

        Returns:
            The problems found (empty when the prior is inside).
        """
        problems = self.family.hyperprior.problems(prior)
        if problems and warn:
            warnings.warn(
                f"The prior is outside the hyper-distribution that the amortizer for family "
                f"{self.family.name!r} was trained on, so its posterior may be inaccurate: "
                f"{'; '.join(problems)}.", PriorOutsideTrainingWarning, stacklevel=3)
        return problems

    def posterior(
        self,
        data: Float[Array, "*batch n p"],
        mask=None,
        prior: GaussianMixture | None = None,
        *,
        check_prior: bool = True,
    ) -> GaussianMixture:
        """Approximate posteriors for one data set or a batch of them (jitted, vmapped).

        Args:
            data: ``(n, data_dim)`` or ``(batch, n, data_dim)``; ``n`` up to
                ``family.max_points`` observed points (extra rows are fine when the mask
                leaves at most that many observed).
            mask: booleans shaped like ``data`` without its last axis (None: all observed).
            prior: one mixture over ``theta`` (shared by every data set) or a batch of them
                (batch shape ``(batch,)``).
            check_prior: warn (:class:`PriorOutsideTrainingWarning`) when the prior lies
                outside the training hyper-distribution (:meth:`check_prior`).

        Returns:
            The posterior mixture(s): batch shape ``()`` or ``(batch,)`` as the data.

        Raises:
            ValueError: a data set of the wrong shape, more points than ``max_points``, NaN
                or infinite observed values, a mask of the wrong shape, an invalid prior or
                one of the wrong dimension or batch shape.
        """
        family = self.family
        data = np.asarray(data, dtype=np.float32)
        if data.ndim not in (2, 3):
            raise ValueError(f"Expected data of shape (n, {family.data_dim}) or (batch, n, "
                             f"{family.data_dim}), got {data.shape}.")
        if data.shape[-1] != family.data_dim:
            raise ValueError(
                f"Expected {family.data_dim} numbers per data point for family "
                f"{family.name!r} ({', '.join(family.data_labels)}), got {data.shape[-1]}.")
        single = data.ndim == 2
        if single:
            data = data[None]
        if mask is None:
            mask = np.ones(data.shape[:2], bool)
        else:
            mask = np.asarray(mask)
            if single:
                mask = mask[None]
            if mask.shape != data.shape[:2]:
                wanted = data.shape[1:2] if single else data.shape[:2]
                raise ValueError(f"Expected mask of shape {wanted} (the data's without its last "
                                 f"axis), got {mask.shape[1:] if single else mask.shape}.")
            if mask.dtype != bool:
                if not np.all((mask == 0) | (mask == 1)):
                    raise ValueError("Expected a boolean mask, got values other than 0 and 1.")
                mask = mask.astype(bool)
        counts = mask.sum(axis=1)
        if counts.max(initial=0) > family.max_points:
            where = int(np.argmax(counts))
            raise ValueError(
                f"Expected at most {family.max_points} observed points per data set (the "
                f"max_points of family {family.name!r}), got {int(counts[where])}"
                + ("" if single else f" in data set {where}") + ".")
        bad = mask & ~np.all(np.isfinite(data), axis=-1)
        if bad.any():
            where, point = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError("Expected finite data, got NaN or inf at point "
                             f"{point}" + ("" if single else f" of data set {where}") + ".")
        problem = family.data_problems(data[0], mask[0]) if single else family.data_problems(
            data, mask)
        if problem:
            raise ValueError(problem)
        data, mask = _fit_rows(data, mask, family.max_points)
        if not isinstance(prior, GaussianMixture):
            raise ValueError(f"Expected prior to be a GaussianMixture, got "
                             f"{type(prior).__name__}.")
        prior.validate()
        if prior.dim != family.dim:
            raise ValueError(f"Expected a prior over {family.dim} parameters (family "
                             f"{family.name!r}), got one over {prior.dim}.")
        if prior.batch_shape not in ((), (data.shape[0],)) or (single and prior.batch_shape):
            raise ValueError(f"Expected one prior or a batch of {data.shape[0]} (one per data "
                             f"set), got batch shape {prior.batch_shape}.")
        if check_prior:
            self.check_prior(prior)
        if prior.batch_shape:
            result = _posterior_batched_prior(self.model, prior, data, mask)
        else:
            result = _posterior_shared_prior(self.model, prior, data, mask)
        return result.select(0) if single else result

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``weights.eqx`` and ``amortizer.json`` into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(directory / WEIGHTS_FILE,
                      lambda p: eqx.tree_serialise_leaves(p, self.model))
        description = {
            "format": FORMAT,
            "family": family_to_json(self.family),
            "architecture": self.config.to_json(),
            "num_parameters": num_parameters(self.model),
            "training": self.training,
            "versions": {"jax": jax.__version__, "equinox": eqx.__version__,
                         "optax": optax.__version__},
        }
        _write_atomic(directory / CONFIG_FILE, lambda p: p.write_text(
            json.dumps(description, indent=1) + "\n"))
        return directory

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        family: str | AbstractFamily | None = None,
        architecture: TransformerConfig | dict[str, Any] | None = None,
    ) -> Amortizer:
        """Load a saved amortizer, refusing one for another family or architecture.

        Args:
            directory: what :meth:`save` wrote.
            family: the family expected (name or family); None: the registered family of
                the checkpoint's name, which must equal the stored one (if registered).
            architecture: the architecture expected: a ``TransformerConfig`` or a dict of
                hyperparameters (``width``, ``depth``, ...); None: any.

        Raises:
            ValueError: a missing or foreign file, or a mismatch (naming both sides).
        """
        directory = Path(directory)
        path = directory / CONFIG_FILE
        if not path.exists():
            raise ValueError(f"Expected an amortizer checkpoint in {directory}, got no "
                             f"{CONFIG_FILE} there.")
        description = json.loads(path.read_text())
        if description.get("format") != FORMAT:
            raise ValueError(f"Expected {path} in format {FORMAT!r}, got "
                             f"{description.get('format')!r}.")
        stored_family = family_from_json(description["family"])
        if family is None and stored_family.name in family_names():
            family = stored_family.name
        if family is not None:
            expected = get_family(family)
            if expected.name != stored_family.name:
                raise ValueError(f"Expected a checkpoint for family {expected.name!r}, got one "
                                 f"for family {stored_family.name!r} ({directory}).")
            if expected != stored_family:
                detail = _differences(family_to_json(expected), family_to_json(stored_family))
                raise ValueError(
                    f"Expected a checkpoint for family {expected.name!r} with its current "
                    f"settings, got one trained with other settings ({directory}; expected vs "
                    f"checkpoint: {'; '.join(detail)}).")
        config = TransformerConfig.from_json(description["architecture"])
        if architecture is not None:
            if isinstance(architecture, TransformerConfig):
                wanted, got = architecture.to_json(), config.to_json()
            else:
                wanted = {**ARCHITECTURE_DEFAULTS, **architecture}
                got = config.hyperparameters()
                wanted = {key: wanted[key] for key in got}
            if wanted != got:
                raise ValueError(
                    f"Expected a checkpoint with architecture {wanted}, got one with "
                    f"{got} ({directory}; differing: {'; '.join(_differences(wanted, got))}).")
        skeleton = eqx.filter_eval_shape(DistributionTransformer, config, key=jax.random.key(0))
        problem = None
        try:
            model = eqx.tree_deserialise_leaves(directory / WEIGHTS_FILE, skeleton)
        except Exception as error:  # equinox/numpy raise several kinds for a bad file
            problem = error
        else:
            wanted, got = _array_shapes(skeleton), _array_shapes(model)
            if wanted != got:
                problem = f"{len(got)} arrays, shapes {got[:3]}..., expected {wanted[:3]}..."
        if problem is not None:
            raise ValueError(f"Expected {directory / WEIGHTS_FILE} to hold the weights of the "
                             f"architecture in {CONFIG_FILE}, got a file that does not match: "
                             f"{problem}")
        return cls(model, stored_family, description.get("training", {}))


def build_model(config: TransformerConfig, key) -> DistributionTransformer:
    """A freshly initialised network (one compiled program instead of many small ones)."""
    return eqx.filter_jit(DistributionTransformer)(config, key=key)


def _array_shapes(tree) -> list[tuple[tuple[int, ...], str]]:
    leaves = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return [(tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves
            if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct, np.ndarray))]


def _fit_rows(data, mask, max_points):
    """Data sets with exactly ``max_points`` rows: observed rows first, padding after."""
    rows = data.shape[1]
    if rows > max_points:
        order = np.argsort(~mask, axis=1, kind="stable")[:, :max_points]
        data = np.take_along_axis(data, order[..., None], axis=1)
        mask = np.take_along_axis(mask, order, axis=1)
    elif rows < max_points:
        extra = max_points - rows
        data = np.concatenate([data, np.zeros((data.shape[0], extra, data.shape[2]),
                                              data.dtype)], axis=1)
        mask = np.concatenate([mask, np.zeros((mask.shape[0], extra), bool)], axis=1)
    data = np.where(mask[..., None], data, 0.0).astype(np.float32)
    return data, mask


def checkpoint_path(name: str) -> Path:
    """Where the shipped checkpoint of family ``name`` lives:
    ``models/amortized/checkpoints/<name>/`` in the ``ppl.models`` package."""
    spec = importlib.util.find_spec("ppl.models")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("Expected the ppl.models package to be installed, got none.")
    return Path(next(iter(spec.submodule_search_locations))) / "amortized" / "checkpoints" / name


def load_pretrained(name: str) -> Amortizer:
    """The shipped amortizer of family ``name`` (see ``checkpoint_path``)."""
    path = checkpoint_path(name)
    if not (path / CONFIG_FILE).exists():
        raise ValueError(f"Expected a shipped checkpoint for family {name!r} in {path}, got "
                         f"none (train one with `python -m ppl.inference.amortized."
                         f"train_family train {name}`).")
    return Amortizer.load(path, family=name)
