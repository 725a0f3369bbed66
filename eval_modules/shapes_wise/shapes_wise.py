"""WISE on the shapes world: knowledge prompts that name kind and colour only indirectly."""

import evaluate

from arm.eval.metric_module import image_metric_info, score_scenes
from arm.eval.scoring import score_wise

_DESCRIPTION = """\
WISE (Niu et al., 2025) tests whether a text-to-image model brings world knowledge to a prompt
that describes an object without naming it. Here prompts come from shapes.knowledge_prompt
("a shape with three corners, the colour of grass, in the center"); the oracle parses each image
and `score` is the share whose scene is exactly the implied one (kind, colour, size, position).
Per-aspect accuracies say which part of the knowledge was used.
"""

_CITATION = """\
@article{niu2025wise, title={WISE: A World Knowledge-Informed Semantic Evaluation for
Text-to-Image Generation}, author={Niu, Yuwei and others}, journal={arXiv:2503.07265}, year={2025}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL).
    references: JSON strings of the implied scene (a list with one object).
    world: the world config (dict or WorldConfig).
    return_per_sample: also return per-image results under "per_sample".
    reader: images -> scenes (e.g. the learned judge's `read`); default: the shapes oracle.
Returns:
    score, kind_accuracy, color_accuracy, size_accuracy, position_accuracy (all in [0, 1]).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ShapesWise(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, world=None, return_per_sample=False, reader=None):
        return score_scenes(score_wise, predictions, references, world, return_per_sample, reader=reader)
