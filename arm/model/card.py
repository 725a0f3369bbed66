"""The model card (README.md) of a model dir: what a Hugging Face user reads first.

YAML metadata (library, pipeline tag, the `model-index` of `arm evaluate` results) and a body with
the vocabulary layout, the prompt format of each task and a sampling snippet for plain
transformers. Rendered by huggingface_hub's `ModelCard.from_template` (Jinja2) from what the dir
itself holds (vocab_layout.json, manifest.json), so the card can never disagree with the model.

`export_model` writes it with every model dir; `arm package` re-renders it with the eval results
in the packaged copy (writing them into models/arm-* would change a DVC output of an earlier stage).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from arm.io import atomic_write_text
from arm.text.vocab import VocabLayout, grid_token_name

CARD_FILE = "README.md"
MANIFEST_FILE = "manifest.json"

# The Hub task id of each `arm evaluate` benchmark (model-index `task.type`); others: any-to-any.
BENCHMARK_TASKS = {
    "shapes_geneval": "text-to-image",
    "shapes_wise": "text-to-image",
    "shapes_edit": "image-to-image",
    "understanding": "visual-question-answering",
    "tokenizer": "image-to-image",
}
DEFAULT_TASK = "any-to-any"

TEMPLATE = """---
{{ card_data }}
---

# {{ name }}

A unified autoregressive multimodal model (ARM): one decoder-only {{ arch }} transformer that
describes images, generates images from text and edits images from instructions by next-token
prediction over one vocabulary of text tokens and discrete image tokens. Images enter and leave
the model as {{ grid[0] }}x{{ grid[1] }} grids of codes of an FSQ visual tokenizer (levels {{ levels }}).
The weights are a stock `{{ arch }}` checkpoint: `AutoModelForCausalLM` loads them with no custom code.

## Vocabulary layout

| ids | tokens |
|---|---|
| 0 .. {{ n_text - 1 }} | text (`{{ text_tokenizer }}` tokenizer) |
{%- for name, id in specials %}
| {{ id }} | `{{ name }}` |
{%- endfor %}
| {{ image_offset }} .. {{ vocab_size - 1 }} | image codes `<img_0>` .. `<img_{{ codebook_size - 1 }}>` (code c is id {{ image_offset }} + c) |

An image is `<boi>`, its {{ tokens_per_image }} codes in row-major order, `<eoi>`.
{%- if grids|length > 1 %} The model draws images on {{ grids|length }} aspect buckets (h x w tokens:
{% for g in grids %}{{ g[0] }}x{{ g[1] }}{% if not loop.last %}, {% endif %}{% endfor %}): every image opens with its
bucket's token, `<boi><grid_HxW>`, followed by h*w codes (the {{ grid[0] }}x{{ grid[1] }} default: {{ tokens_per_image }}). To
generate at another aspect ratio, end the prompt with that bucket's grid token.{% endif %} The text tokenizer
(`PreTrainedTokenizerFast`) knows every special and image token by name, so a prompt can be written
as a string. `vocab_layout.json` holds the same layout as JSON.

## Prompt format

| task | prompt (the model continues from here) | target |
|---|---|---|
| describe / answer | `<bos><boi>` IMAGE `<eoi>` question `<sep>` | answer `<eos>` |
| generate | `<bos>` caption `<boi>` | {{ tokens_per_image }} image codes `<eoi><eos>` |
| edit | `<bos><boi>` SOURCE `<eoi>` instruction `<boi>` | {{ tokens_per_image }} image codes `<eoi><eos>` |
| text | `<bos>` | text `<eos>` |

For classifier-free guidance the condition (caption or instruction) is replaced by `<uncond>`.

## Sampling with plain transformers

```python
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

model_dir = "{{ model_ref }}"  # or the Hub repo id it was uploaded to
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
# PreTrainedTokenizerFast, not AutoTokenizer: the class of some architectures' own tokenizer
# (Qwen2Tokenizer) would add tokens and shift every special and image id.
tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
image_ids = list(range({{ image_offset }}, {{ vocab_size }}))

# generate: a caption -> {{ tokens_per_image }} image codes (all other tokens suppressed)
gen_ids = tokenizer("<bos>a small red circle in the top left<boi>{{ grid_head }}", add_special_tokens=False,
                    return_tensors="pt").input_ids
out = model.generate(gen_ids, max_new_tokens={{ tokens_per_image }}, do_sample=True,
                     suppress_tokens=list(range({{ image_offset }})))
codes = (out[0, gen_ids.shape[1]:] - {{ image_offset }}).tolist()  # {{ grid[0] }}x{{ grid[1] }}, row-major

# describe: an image's codes + a question -> an answer (image tokens suppressed)
image = "<boi>{{ grid_head }}" + "".join(f"<img_{c}>" for c in codes) + "<eoi>"
ask_ids = tokenizer(f"<bos>{image}what colour is the circle?<sep>", add_special_tokens=False,
                    return_tensors="pt").input_ids
out = model.generate(ask_ids, max_new_tokens=24, do_sample=False, suppress_tokens=image_ids)
answer = tokenizer.decode(out[0, ask_ids.shape[1]:], skip_special_tokens=True)
```

Codes become pixels through the visual tokenizer{% if visual_tokenizer %} (`{{ visual_tokenizer }}`){% endif %}:
`arm.tokenizer.model.VisualTokenizer.from_pretrained(dir).decode(torch.tensor(codes).view(1, {{ grid[0] }}, {{ grid[1] }}))`.
`arm.sample.pipeline.ArmPipeline.from_pretrained(model_dir)` does all of this, with classifier-free
guidance and constrained decoding.

## Training

From `manifest.json` (which also names the visual tokenizer and its fingerprint):

```yaml
{{ training }}```

## Evaluation
{% if results %}
Results of `arm evaluate` ({{ eval_preset }} preset): headline metrics of each benchmark; the
model-index above holds the same numbers.

| benchmark | metric | value |
|---|---|---|
{%- for r in results %}
| {{ r.dataset_name }} | {{ r.metric_type }} | {{ r.metric_value }} |
{%- endfor %}
{% else %}
Not evaluated yet: `arm evaluate {{ model_ref }}` scores it and `arm package` puts the results in the
packaged model's card.
{% endif %}
"""


def eval_results(metrics: dict[str, Any]) -> list[EvalResult]:
    """The model-index entries of an `arm evaluate` metrics file: each benchmark's headline
    metrics (keys without a `/`; those with one are per-split and per-judge breakdowns)."""
    scores = metrics.get("scores")
    if not isinstance(scores, dict):
        raise ValueError("eval metrics: no `scores` table (not an `arm evaluate` metrics file)")
    out = []
    for bench in sorted(scores):
        table = scores[bench]
        if not isinstance(table, dict):
            raise ValueError(f"eval metrics: scores.{bench} is {type(table).__name__}, expected a mapping")
        for metric in sorted(table):
            value = table[metric]
            if "/" in metric or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            out.append(EvalResult(task_type=BENCHMARK_TASKS.get(bench, DEFAULT_TASK), dataset_type=bench,
                                  dataset_name=bench, metric_type=metric, metric_name=metric,
                                  metric_value=float(value)))
    return out


def render_model_card(directory: str | Path, *, model_ref: str | None = None,
                      eval_metrics: dict[str, Any] | None = None) -> ModelCard:
    """The card of the model dir `directory` (read from its vocab_layout.json and manifest.json).

    `model_ref`: the path or repo id the snippet loads (default: `directory`)."""
    directory = Path(directory)
    layout = VocabLayout.load(directory)
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{manifest_path}: invalid JSON: {e}") from None
    config = json.loads((directory / "config.json").read_text())
    model_ref = str(model_ref if model_ref is not None else directory)
    name = Path(model_ref).name or "arm"
    results = eval_results(eval_metrics) if eval_metrics else []
    data = ModelCardData(
        library_name="transformers", pipeline_tag="any-to-any", model_name=name,
        tags=["arm", "multimodal", "text-to-image", "image-to-text", "image-editing", "autoregressive"],
        eval_results=results or None,
    )
    vt = manifest.get("visual_tokenizer")
    vt_ref = (vt.get("path") or vt.get("kind")) if isinstance(vt, dict) else vt
    training = yaml.safe_dump({k: manifest[k] for k in ("data", "model", "pretrain", "rl") if k in manifest},
                              sort_keys=True, default_flow_style=None, width=100)
    return ModelCard.from_template(
        data, template_str=TEMPLATE, name=name, arch=config.get("model_type", "transformer"), model_ref=model_ref,
        grid=list(layout.grid), grids=[list(g) for g in layout.grids], levels=list(layout.levels), n_text=layout.n_text,
        grid_head=grid_token_name(layout.grid) if layout.multi_grid else "",
        specials=[(s, layout.special(s)) for s in layout.specials], image_offset=layout.image_offset,
        vocab_size=layout.vocab_size, codebook_size=layout.codebook_size, tokens_per_image=layout.tokens_per_image,
        text_tokenizer=manifest.get("text_tokenizer", "text"), visual_tokenizer=vt_ref, training=training,
        results=results, eval_preset=(eval_metrics or {}).get("preset"),
    )


def write_model_card(directory: str | Path, *, model_ref: str | None = None,
                     eval_metrics: dict[str, Any] | None = None) -> Path:
    """Render and write `directory`/README.md atomically; returns its path."""
    card = render_model_card(directory, model_ref=model_ref, eval_metrics=eval_metrics)
    return atomic_write_text(Path(directory) / CARD_FILE, str(card))
