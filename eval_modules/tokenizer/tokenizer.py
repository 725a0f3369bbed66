"""Visual tokenizer reconstruction: PSNR, SSIM (torchmetrics) and codebook usage."""

import evaluate

from arm.eval.metric_module import image_metric_info, with_per_sample
from arm.eval.scoring import score_tokenizer

_DESCRIPTION = """\
How much of an image survives encode -> decode through the discrete visual tokenizer. PSNR
(dB, data range 1, per image then averaged; identical images are capped at 100 dB) and SSIM
(Gaussian window, sigma 1.5) come from torchmetrics, with the conventions of
arm/eval/image_metrics.py that the tokenizer's own evaluation uses too. With the codes and the
codebook size it also reports code_usage (share of codebook entries used) and code_perplexity
(exp of the code entropy).
"""

_CITATION = ""

_KWARGS_DESCRIPTION = """
Args:
    predictions: reconstructed images (PIL); references: the original images (PIL), any size
    (reconstructions are resized to them).
    codes: optional integer codes of the images (any shape); codebook_size: required with codes.
    return_per_sample: also return per-image results under "per_sample".
Returns:
    psnr, ssim, and with codes: code_usage, code_perplexity.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Tokenizer(evaluate.Metric):
    def _info(self):
        return image_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, references="image")

    def _compute(self, predictions, references, codes=None, codebook_size=None, return_per_sample=False):
        return with_per_sample(score_tokenizer(predictions, references, codes, codebook_size), return_per_sample)
