"""Fashion-MNIST: class-conditional generation judged by a classifier, and understanding."""

import datasets
import evaluate

from arm.eval.scoring import score_fmnist_generation, score_fmnist_understanding

_DESCRIPTION = """\
Two configurations. `generation`: each image was generated from the caption of a class
("a photo of a sneaker"); a small classifier trained in the eval stage on the Fashion-MNIST
train split (arm.eval.fmnist.load_or_train) names its class, and `generation_accuracy` is the
share named as prompted. Blank images (pixel std below the judge's threshold) count as wrong.
`understanding`: answers to "what is this?" and yes/no questions about t10k images, exact match
after normalisation; `understanding_accuracy` is the class-naming accuracy.
"""

_CITATION = """\
@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms}, author={Xiao, Han and Rasul, Kashif and Vollgraf, Roland},
journal={arXiv:1708.07747}, year={2017}}
"""

_KWARGS_DESCRIPTION = """
Args (config "generation"):
    predictions: generated images (PIL); references: class indices (int);
    judge: an arm.eval.fmnist.FmnistJudge (required).
Args (config "understanding"):
    predictions: answers (str); references: reference answers (str);
    kinds: question kinds ("what", "footwear", "top", "is_class").
    return_per_sample: also return per-sample results under "per_sample".
Returns:
    generation: generation_accuracy, blank_fraction.
    understanding: understanding_accuracy, vqa_accuracy, vqa_<kind>.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Fmnist(evaluate.Metric):
    def _info(self):
        if self.config_name == "generation":
            cols = {"predictions": datasets.Image(), "references": datasets.Value("int64")}
        elif self.config_name == "understanding":
            cols = {"predictions": datasets.Value("string"), "references": datasets.Value("string"),
                    "kinds": datasets.Value("string")}
        else:
            raise KeyError(f"fmnist: config_name must be 'generation' or 'understanding', got {self.config_name!r}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(cols),
        )

    def _compute(self, predictions, references, kinds=None, judge=None, return_per_sample=False):
        if self.config_name == "generation":
            if judge is None:
                raise ValueError("fmnist generation: pass judge=arm.eval.fmnist.load_or_train(cfg.eval.fmnist)")
            summary, per_sample = score_fmnist_generation(predictions, references, judge)
        else:
            summary, per_sample = score_fmnist_understanding(predictions, references, kinds)
        if return_per_sample:
            summary["per_sample"] = per_sample
        return summary
