"""GenEval on the shapes world: object-focused text-to-image checks scored by the scene oracle."""

import evaluate

from arm.eval.metric_module import image_metric_info, score_scenes
from arm.eval.scoring import score_geneval

_DESCRIPTION = """\
GenEval (Ghosh et al., 2023) asks whether a text-to-image model draws the objects, counts,
colours and positions its prompt names. Here a detector is not needed: the shapes oracle parses
every generated image into a scene graph, so each check is exact. Categories: single_object,
two_object, counting, colors, position, color_attr; `overall` is the mean of the category
accuracies (GenEval's headline), `exact_scene` the share of images that are exactly the prompt's
scene.
"""

_CITATION = """\
@article{ghosh2023geneval, title={GenEval: An Object-Focused Framework for Evaluating
Text-to-Image Alignment}, author={Ghosh, Dhruba and Hajishirzi, Hannaneh and Schmidt, Ludwig},
journal={NeurIPS Datasets and Benchmarks}, year={2023}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images (PIL), one per reference.
    references: JSON strings {"category": ..., "scene": [objects]} (data/eval_prompts/geneval.jsonl).
    world: the world config (dict or WorldConfig) the images were drawn in; default: params' default.
    return_per_sample: also return per-image results under "per_sample".
    reader: images -> scenes (e.g. the learned judge's `read`); default: the shapes oracle.
Returns:
    overall, one accuracy per category present, exact_scene (all in [0, 1]).
Examples:
    >>> m = evaluate.load("eval_modules/shapes_geneval")
    >>> m.compute(predictions=[img], references=['{"category": "single_object", "scene": [...]}'])
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ShapesGeneval(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, world=None, return_per_sample=False, reader=None):
        return score_scenes(score_geneval, predictions, references, world, return_per_sample, reader=reader)
