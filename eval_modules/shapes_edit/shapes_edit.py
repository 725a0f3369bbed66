"""GEdit-Bench on the shapes world: instruction-guided edits judged by the scene oracle."""

import evaluate

from arm.eval.metric_module import image_metric_info, score_scenes
from arm.eval.scoring import score_edit

_DESCRIPTION = """\
GEdit-Bench (Liu et al., 2025) scores an edit with a VLM judge on semantic consistency (SC, did
the edit follow the instruction without over-editing, 0-10), perceptual quality (PQ, 0-10) and
the overall G_O = sqrt(SC * PQ) per sample, averaged. Here the judge is the shapes oracle:
SC = 10 * min(instruction fulfilled on the edited cells, share of the other cells preserved)
(VIEScore's min of success and over-editing); PQ = 10 * share of the ink (in the image or in a
clean re-render of its parsed scene) on which the two agree. `success` and `preservation` are
reported on their own, in [0, 1], with success per edit operation.
"""

_CITATION = """\
@article{liu2025step1xedit, title={Step1X-Edit: A Practical Framework for General Image Editing},
author={Liu, Shiyu and others}, journal={arXiv:2504.17761}, year={2025}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: edited images (PIL).
    references: JSON strings {"source_scene": [...], "target_scene": [...], "op": ...}.
    world: the world config (dict or WorldConfig).
    tolerance: per-channel distance (0-255) at which ink still counts as clean (default 48).
    return_per_sample: also return per-image results under "per_sample".
    reader: images -> scenes (e.g. the learned judge's `read`); default: the shapes oracle.
Returns:
    overall, semantic_consistency, perceptual_quality (0-10); success, preservation and
    success_<op> (0-1).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ShapesEdit(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION)

    def _compute(self, predictions, references, world=None, tolerance=48, return_per_sample=False, reader=None):
        return score_scenes(score_edit, predictions, references, world, return_per_sample, tolerance, reader=reader)
