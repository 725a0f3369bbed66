"""Image understanding on the shapes world: VQA exact match and caption scene-graph F1."""

import json

import datasets
import evaluate

from arm.eval.scoring import score_captions, score_vqa

_DESCRIPTION = """\
Two configurations. `vqa`: answers are compared with the reference after normalisation (case,
trailing punctuation, a leading article, digits spelled out); `vqa_accuracy` overall and per
question type (count, shape_at, exists, color_of, size_of). `caption`: each caption is parsed
back into objects ("a small red circle in the top left, ...") and matched as a multiset of
(position, kind, colour, size) against the true scene: precision, recall, F1 per caption,
averaged; `caption_exact` is the share of captions that state exactly the scene.
"""

_CITATION = ""

_KWARGS_DESCRIPTION = """
Args (config "vqa"):
    predictions: answers (str); references: reference answers (str); questions: the questions (str).
Args (config "caption"):
    predictions: captions (str); references: JSON strings of the true scene; grid: the world's grid (default 3).
    return_per_sample: also return per-sample results under "per_sample".
Returns:
    vqa: vqa_accuracy, vqa_<type>. caption: caption_f1, caption_precision, caption_recall, caption_exact.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Understanding(evaluate.Metric):
    def _info(self):
        if self.config_name not in ("vqa", "caption"):
            raise KeyError(f"understanding: config_name must be 'vqa' or 'caption', got {self.config_name!r}")
        cols = {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
        if self.config_name == "vqa":
            cols["questions"] = datasets.Value("string")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(cols),
        )

    def _compute(self, predictions, references, questions=None, grid=3, return_per_sample=False):
        if self.config_name == "vqa":
            summary, per_sample = score_vqa(predictions, references, questions)
        else:
            summary, per_sample = score_captions(predictions, [json.loads(r) for r in references], grid)
        if return_per_sample:
            summary["per_sample"] = per_sample
        return summary
