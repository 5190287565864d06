"""A-NeSI training, the trained :class:`ANeSI` and its checkpoints.

Maths (van Krieken et al. 2023, the predict-only variant). Two networks: the perception network
``f`` (an image ``x_j`` to the belief ``P_j = softmax(f(x_j))``) and the inference model
``q(y | P)`` (:mod:`.inference_model`). Two losses, each training one network:

* Inference model, on beliefs from a prior. ``P_j ~ Dirichlet(alpha 1)`` independently, symbols
  ``w_j ~ P_j``, the output ``y = c(w)`` from the program, and

      L_q = E_P E_{w ~ P} [-log q(c(w) | P)],

  whose minimiser is the exact weighted model count ``p(y | P)`` for every ``P`` in the
  prior's support (``E_{w~P}[-log q(c(w)|P)] = H(p(.|P)) + KL(p(.|P) || q(.|P))``). The
  symbols are sampled, never enumerated: this is what makes each step cost linear in the
  number of inputs. In the joint phase the same loss is also applied to the perception's
  current beliefs (gradient stopped into ``f``), so that ``q`` is accurate where ``f`` is.
* Perception, from the task label alone. For an example ``(x_1..x_K, y)``,

      L_f = -log q(y | f(x_1), ..., f(x_K)),

  back-propagated through the (fixed during this update) inference model into ``f``.

Training runs ``prior_steps`` steps of ``L_q`` alone (so that ``q`` is informative before
``f`` learns from it), then ``steps`` joint steps of both. Both optimisers are optax Adam. The
step ``s`` draws its batch with ``fold_in(key, s)``. Steps run in jitted ``lax.scan`` chunks
with a log line between chunks.

For addition, ``explanation_steps`` steps then train the explanation model ``q(w | y, P)``
(:mod:`.explanation`) on the prior and on the trained perception's beliefs, so that a
checkpoint answers both "which sum?" and "which digits?".

Checkpoints (:meth:`ANeSI.save`): ``weights.eqx`` (``eqx.tree_serialise_leaves`` of the
perception network, the inference model and the explanation model when there is one) and
``anesi.json`` beside it (the program and its settings, ``num_digits`` for addition, the
architectures, the training settings and record).
:meth:`ANeSI.load` refuses a checkpoint trained for another program or another ``N``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .data import Split, load_split, sample_examples, validate_images
from .explanation import ExplanationModel, explain, train_explanation
from .inference_model import InferenceModel, beam_search, check_program, greedy, log_prob
from .perception import PerceptionNetwork, beliefs
from .programs import AbstractProgram, Addition, digits_to_int, program_from_json

__all__ = ["TrainingSettings", "ANeSI", "Prediction", "train", "evaluate", "prior_loss", "FORMAT",
           "CONFIG_FILE", "WEIGHTS_FILE", "checkpoint_path", "load_pretrained"]

FORMAT = "ppl.anesi/2"  # 2: addition decoded least significant first, explanation saved
CONFIG_FILE = "anesi.json"
WEIGHTS_FILE = "weights.eqx"


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """A-NeSI training settings.

    Attributes:
        steps: joint steps (perception and inference model).
        prior_steps: steps of the inference model alone on prior beliefs, before the joint phase.
        batch_size: task examples per joint step.
        prior_batch_size: prior beliefs per step of ``L_q``.
        learning_rate: Adam step size of the inference model.
        perception_learning_rate: Adam step size of the perception network.
        dirichlet_alpha: the symmetric Dirichlet concentration of the belief prior (small
            values give confident beliefs, as a trained perception network's are).
        chunk_size: steps per compiled chunk (one log line each).
        seed: the training key is ``jax.random.key(seed)``.
        explanation_steps: steps of the explanation model after the joint phase (addition
            only; 0 trains none).
    """

    steps: int = 20000
    prior_steps: int = 500
    batch_size: int = 32
    prior_batch_size: int = 128
    learning_rate: float = 1e-3
    perception_learning_rate: float = 1e-3
    dirichlet_alpha: float = 0.1
    chunk_size: int = 250
    seed: int = 0
    explanation_steps: int = 2000

    def __post_init__(self):
        for name in ("batch_size", "prior_batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "prior_steps", "explanation_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "perception_learning_rate", "dirichlet_alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class Prediction(NamedTuple):
    """The most likely output per example under ``q``, and ``q`` of it.

    Attributes:
        digits: ``(batch, num_outputs)`` output digits, most significant first.
        values: ``(batch,)`` the outputs as integers (int64; object for more than 18 digits).
        probability: ``(batch,)`` ``q(y | P)`` of the returned output.
        beliefs: ``(batch, num_inputs, 10)`` the perception network's beliefs.
        explanation: ``(batch, num_inputs)`` the most likely symbols behind each output under
            the explanation model (they always reproduce the output), or ``None`` when the
            model has no explanation model.
        explanation_probability: ``(batch,)`` ``q(w | y, P)`` of that explanation, or ``None``.
        alternatives: ``(batch, beam_width)`` the best outputs of the beam as integers, best
            first (the first column is ``values``); ``alternative_probabilities`` their ``q``.
    """

    digits: np.ndarray
    values: np.ndarray
    probability: np.ndarray
    beliefs: np.ndarray
    explanation: np.ndarray | None = None
    explanation_probability: np.ndarray | None = None
    alternatives: np.ndarray | None = None
    alternative_probabilities: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ANeSI:
    """A trained perception network and inference model for one program."""

    program: AbstractProgram
    perception: PerceptionNetwork
    inference_model: InferenceModel
    settings: TrainingSettings = TrainingSettings()
    record: dict = dataclasses.field(default_factory=dict)
    explanation: ExplanationModel | None = None

    def __post_init__(self):
        check_program(self.inference_model, self.program)
        if self.explanation is not None and (
                not isinstance(self.program, Addition)
                or self.explanation.num_digits != self.program.num_digits):
            raise ValueError(f"the explanation model (addition(num_digits="
                             f"{self.explanation.num_digits})) does not match the program "
                             f"{self.program.describe()}")

    def beliefs(self, images) -> jax.Array:
        """``(batch, num_inputs, 10)`` beliefs of images ``(batch, num_inputs, 8, 8 | 64)``."""
        flat = validate_images(images, leading_shape=(None, self.program.num_inputs))
        return _beliefs_jit(self.perception, jnp.asarray(flat))

    def predict_outputs(self, images, *, beam_width: int = 1) -> Prediction:
        """The most likely output of each example (greedy, or the best of a beam search)."""
        if beam_width < 1:
            raise ValueError(f"beam_width must be >= 1, got {beam_width}")
        p = self.beliefs(images)
        beams, beam_log_q = _decode_jit(self.inference_model, self.program, p, beam_width)
        digits, log_q = beams[:, 0], beam_log_q[:, 0]
        explanation = explanation_probability = None
        if self.explanation is not None:
            symbols, log_e = _explain_jit(self.explanation, self.program, p, digits)
            explanation, explanation_probability = np.asarray(symbols), np.exp(np.asarray(log_e))
        digits, log_q = np.asarray(digits), np.asarray(log_q)
        as_int = [digits_to_int(row) for row in digits]
        dtype = np.int64 if digits.shape[1] <= 18 else object
        values = np.array(as_int, dtype=dtype)
        beams = np.asarray(beams)
        alternatives = np.array([[digits_to_int(row) for row in rows] for rows in beams],
                                dtype=dtype).reshape(beams.shape[:2])
        return Prediction(digits, values, np.exp(log_q), np.asarray(p), explanation,
                          explanation_probability, alternatives, np.exp(np.asarray(beam_log_q)))

    def save(self, directory) -> Path:
        """Write ``weights.eqx`` and ``anesi.json`` into ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        eqx.tree_serialise_leaves(directory / WEIGHTS_FILE,
                                  (self.perception, self.inference_model, self.explanation))
        config = {
            "format": FORMAT,
            "program": self.program.to_json(),
            "num_digits": getattr(self.program, "num_digits", None),
            "perception": self.perception.architecture(),
            "inference_model": self.inference_model.architecture(),
            "explanation_model": None if self.explanation is None else {
                "width": self.explanation.width, "depth": self.explanation.depth},
            "training": dataclasses.asdict(self.settings),
            "record": self.record,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory, *, program: AbstractProgram | None = None,
             num_digits: int | None = None) -> ANeSI:
        """Load a checkpoint; refuse it if it was trained for another program or ``N``.

        Args:
            directory: a folder written by :meth:`save`.
            program: if given, the checkpoint's program must equal it.
            num_digits: if given, the checkpoint must be ``Addition(num_digits)``'s.
        """
        directory = Path(directory)
        config_path = directory / CONFIG_FILE
        if not config_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not an A-NeSI checkpoint (expected "
                                    f"{CONFIG_FILE} and {WEIGHTS_FILE})")
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{config_path}: format {config.get('format')!r}, expected "
                             f"{FORMAT!r}")
        stored = program_from_json(config["program"])
        if num_digits is not None:
            if program is not None and program != Addition(num_digits):
                raise ValueError(f"give program or num_digits, not both: {program.describe()} "
                                 f"and num_digits={num_digits}")
            program = Addition(num_digits)
        if program is not None and program != stored:
            raise ValueError(f"checkpoint {directory} was trained for {stored.describe()}, "
                             f"not {program.describe()}")
        key = jax.random.key(0)  # the skeleton's values are overwritten by the checkpoint
        explanation_config = config.get("explanation_model")
        skeleton = (PerceptionNetwork(key, **config["perception"]),
                    InferenceModel(key, program=stored, **config["inference_model"]),
                    None if explanation_config is None
                    else ExplanationModel(key, program=stored, **explanation_config))
        perception, inference_model, explanation = eqx.tree_deserialise_leaves(
            directory / WEIGHTS_FILE, skeleton)
        return cls(stored, perception, inference_model, TrainingSettings(**config["training"]),
                   config.get("record", {}), explanation)


def checkpoint_path(num_digits: int) -> Path:
    """Where the shipped checkpoint of ``Addition(num_digits)`` lives:
    ``models/amortized/anesi/n<N>/`` in the ``ppl.models`` package."""
    spec = importlib.util.find_spec("ppl.models")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("Expected the ppl.models package to be installed, got none.")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "amortized" / "anesi" / f"n{int(num_digits)}"


def load_pretrained(num_digits: int) -> ANeSI:
    """The shipped A-NeSI checkpoint for addition of two ``num_digits``-digit numbers."""
    path = checkpoint_path(num_digits)
    if not (path / CONFIG_FILE).is_file():
        shipped = sorted(int(d.name[1:]) for d in path.parent.glob("n*")
                         if (d / CONFIG_FILE).is_file()) if path.parent.is_dir() else []
        raise ValueError(f"no shipped A-NeSI checkpoint for num_digits={num_digits} (shipped: "
                         f"{shipped}); train one with `ppl anesi train --digits "
                         f"{num_digits} --out DIR`")
    return ANeSI.load(path, num_digits=num_digits)


@eqx.filter_jit
def _beliefs_jit(perception, images):
    return beliefs(perception, images)


@eqx.filter_jit
def _explain_jit(model, program, p, outputs):
    return explain(model, program, p, outputs)


@eqx.filter_jit
def _decode_jit(model, program, p, beam_width):
    """``(batch, beam_width, outputs)`` outputs, best first, and their ``log q``."""
    if beam_width == 1:
        outputs, scores = greedy(model, program, p)
        return outputs[:, None], scores[:, None]
    return beam_search(model, program, p, beam_width)


def prior_loss(key, model: InferenceModel, program: AbstractProgram, batch_size: int,
               alpha: float) -> jax.Array:
    """``L_q`` on prior beliefs: ``P ~ Dir(alpha)``, ``w ~ P``, ``-log q(c(w) | P)``."""
    belief_key, symbol_key = jax.random.split(key)
    shape = (batch_size, program.num_inputs)
    p = jax.random.dirichlet(belief_key, jnp.full(program.input_arity, alpha), shape)
    return _sampled_symbols_loss(symbol_key, model, program, p)


def _sampled_symbols_loss(key, model, program, p):
    symbols = jax.random.categorical(key, jnp.log(p))
    return -jnp.mean(log_prob(model, program, p, program(symbols)))


def _root_keys(seed: int):
    """The initialisation key and the key whose ``fold_in(., step)`` draws step ``step``."""
    init_key, step_key = jax.random.split(jax.random.key(seed))
    return init_key, step_key


class _State(NamedTuple):
    perception: Any
    inference_model: Any
    perception_opt: Any
    inference_opt: Any


def _make_chunk(program, static_f, static_q, split: Split, settings: TrainingSettings,
                optimizer_f, optimizer_q, joint: bool, length: int):
    """A jitted function running ``length`` steps of one phase from step index ``start``."""

    def q_update(state, loss_fn):
        loss, grads = jax.value_and_grad(
            lambda q: loss_fn(eqx.combine(q, static_q)))(state.inference_model)
        updates, opt = optimizer_q.update(grads, state.inference_opt, state.inference_model)
        return optax.apply_updates(state.inference_model, updates), opt, loss

    def step(state: _State, index):
        key = jax.random.fold_in(_root_keys(settings.seed)[1], index)
        data_key, prior_key, symbol_key = jax.random.split(key, 3)
        if not joint:
            q, q_opt, loss_q = q_update(state, lambda q: prior_loss(
                prior_key, q, program, settings.prior_batch_size, settings.dirichlet_alpha))
            return state._replace(inference_model=q, inference_opt=q_opt), (jnp.nan, loss_q)
        examples = sample_examples(data_key, split, program, settings.batch_size)
        q_now = eqx.combine(state.inference_model, static_q)

        def perception_loss(f):
            p = beliefs(eqx.combine(f, static_f), examples.images)
            return -jnp.mean(log_prob(q_now, program, p, examples.outputs)), p

        (loss_f, p), grads = jax.value_and_grad(perception_loss, has_aux=True)(
            state.perception)
        updates, f_opt = optimizer_f.update(grads, state.perception_opt, state.perception)
        f = optax.apply_updates(state.perception, updates)
        p = jax.lax.stop_gradient(p)
        q, q_opt, loss_q = q_update(state, lambda q: prior_loss(
            prior_key, q, program, settings.prior_batch_size, settings.dirichlet_alpha)
            + _sampled_symbols_loss(symbol_key, q, program, p))
        return _State(f, q, f_opt, q_opt), (loss_f, loss_q)

    @jax.jit
    def chunk(state, start):
        return jax.lax.scan(step, state, start + jnp.arange(length))

    return chunk


def train(program: AbstractProgram, *, settings: TrainingSettings = TrainingSettings(),
          perception_architecture: dict | None = None,
          inference_architecture: dict | None = None,
          log_fn: Callable[[str], None] | None = None) -> ANeSI:
    """Train A-NeSI for ``program`` on the training split (see the module docstring).

    Args:
        program: the background knowledge, e.g. ``Addition(num_digits=1)``.
        settings: the training settings (their ``seed`` fixes every key).
        perception_architecture: ``PerceptionNetwork`` keyword arguments (width, depth).
        inference_architecture: ``InferenceModel`` keyword arguments (width, depth).
        log_fn: called with one progress line per chunk (e.g. ``print``); none if ``None``.

    Returns:
        the trained :class:`ANeSI`, whose ``record`` holds the final losses and wall time.
    """
    if not isinstance(program, AbstractProgram):
        raise ValueError(f"program must be an AbstractProgram, got {type(program).__name__}")
    split = load_split("train")
    init_key, _ = _root_keys(settings.seed)
    f_key, q_key = jax.random.split(init_key)
    perception = PerceptionNetwork(f_key, **(perception_architecture or {}))
    inference_model = InferenceModel(q_key, program=program, **(inference_architecture or {}))
    params_f, static_f = eqx.partition(perception, eqx.is_array)
    params_q, static_q = eqx.partition(inference_model, eqx.is_array)
    optimizer_f = optax.adam(settings.perception_learning_rate)
    optimizer_q = optax.adam(settings.learning_rate)
    state = _State(params_f, params_q, optimizer_f.init(params_f), optimizer_q.init(params_q))

    start_time = time.perf_counter()
    record: dict[str, Any] = {}
    done = 0
    for joint, total in ((False, settings.prior_steps), (True, settings.steps)):
        phase = "joint" if joint else "prior"
        chunks: dict[int, Any] = {}
        phase_done = 0
        while phase_done < total:
            length = min(settings.chunk_size, total - phase_done)
            if length not in chunks:
                chunks[length] = _make_chunk(program, static_f, static_q, split, settings,
                                             optimizer_f, optimizer_q, joint, length)
            state, (loss_f, loss_q) = chunks[length](state, done)
            done += length
            phase_done += length
            loss_f, loss_q = float(np.mean(loss_f)), float(np.mean(loss_q))
            if not (np.isfinite(loss_q) and (not joint or np.isfinite(loss_f))):
                raise FloatingPointError(f"{phase} phase, step {done}: non-finite loss "
                                         f"(perception {loss_f}, inference model {loss_q})")
            record.update({f"{phase}_loss_inference_model": loss_q})
            if joint:
                record["joint_loss_perception"] = loss_f
            if log_fn is not None:
                perception_part = f"  perception loss {loss_f:.4f}" if joint else ""
                log_fn(f"[anesi {program.describe()}] {phase} step {phase_done}/{total}"
                       f"  inference-model loss {loss_q:.4f}{perception_part}"
                       f"  ({time.perf_counter() - start_time:.1f}s)")
    perception = eqx.combine(state.perception, static_f)
    explanation = None
    if settings.explanation_steps and isinstance(program, Addition):
        explanation = train_explanation(
            jax.random.fold_in(init_key, 1), program, steps=settings.explanation_steps,
            dirichlet_alpha=settings.dirichlet_alpha, perception=perception)
        if log_fn is not None:
            log_fn(f"[anesi {program.describe()}] explanation model, "
                   f"{settings.explanation_steps} steps ({time.perf_counter() - start_time:.1f}s)")
    record["wall_time_s"] = time.perf_counter() - start_time
    return ANeSI(program, perception, eqx.combine(state.inference_model, static_q), settings,
                 record, explanation)


def evaluate(model: ANeSI, *, split: str = "test", num_examples: int = 1000, seed: int = 0,
             beam_width: int = 1) -> dict[str, float]:
    """Accuracy on task examples drawn from ``split`` with ``jax.random.key(seed)``.

    Returns ``output_accuracy`` (the whole output right, e.g. the sum), ``digit_accuracy``
    (the perception's argmax against the digit labels over the split's images, the labels used
    here only) and ``ceiling = digit_accuracy ** num_inputs`` (the output accuracy if every
    image must be read right).
    """
    data = load_split(split)
    examples = sample_examples(jax.random.key(seed), data, model.program, num_examples)
    prediction = model.predict_outputs(np.asarray(examples.images), beam_width=beam_width)
    output_accuracy = float(np.mean(np.all(prediction.digits == np.asarray(examples.outputs),
                                           axis=-1)))
    digit_beliefs = _beliefs_jit(model.perception, data.images)
    digit_accuracy = float(jnp.mean(jnp.argmax(digit_beliefs, -1) == data.labels))
    return {"output_accuracy": output_accuracy, "digit_accuracy": digit_accuracy,
            "ceiling": digit_accuracy ** model.program.num_inputs,
            "num_examples": int(num_examples), "split": split}
