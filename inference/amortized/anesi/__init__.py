"""A-NeSI: approximate neurosymbolic inference (van Krieken et al., NeurIPS 2023).

A perception network maps each image to a belief ``P`` over ten digit classes; an
autoregressive inference model ``q(y | P)``, trained on beliefs from a Dirichlet prior and
outputs computed by a symbolic program, approximates the weighted model count in time linear
in the number of output digits; the perception network learns from the task label alone,
through ``q``. Symbolic pruning gives every output the program cannot produce probability 0.

Modules: :mod:`.programs` (background knowledge: :class:`Addition`, :class:`SumOfDigits`),
:mod:`.data` (the fixed split of scikit-learn's 8x8 digits), :mod:`.perception`,
:mod:`.inference_model`, :mod:`.train` (training, :class:`ANeSI`, checkpoints), :mod:`.exact`
(the enumeration baseline), :mod:`.explanation` (the most likely digits of a sum),
:mod:`.predict` and :mod:`.cli` (``ppl anesi``).
"""

from .data import Examples, Split, load_split, sample_examples, validate_images
from .exact import assignment_table, exact_log_prob, exact_output_distribution, train_exact
from .explanation import ExplanationModel, explain, explanation_log_prob, train_explanation
from .inference_model import InferenceModel, beam_search, greedy, log_prob, sample
from .perception import PerceptionNetwork, beliefs
from .predict import AdditionPrediction, predict
from .programs import AbstractProgram, Addition, SumOfDigits, output_masks, program_from_json
from .train import ANeSI, Prediction, TrainingSettings, evaluate, load_pretrained, train

__all__ = [
    "AbstractProgram", "Addition", "SumOfDigits", "output_masks", "program_from_json",
    "Split", "Examples", "load_split", "sample_examples", "validate_images",
    "PerceptionNetwork", "beliefs",
    "InferenceModel", "log_prob", "sample", "greedy", "beam_search",
    "ANeSI", "Prediction", "TrainingSettings", "train", "evaluate", "load_pretrained",
    "assignment_table", "exact_log_prob", "exact_output_distribution", "train_exact",
    "AdditionPrediction", "predict",
    "ExplanationModel", "explain", "explanation_log_prob", "train_explanation",
]
