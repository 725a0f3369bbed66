"""The model card (README.md) of exported model dirs: Hub metadata, the documented prompt format
and sampling snippet (executed here against a tiny exported model), and the eval model-index."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from arm.model.build import build_model
from arm.model.card import eval_results, write_model_card
from arm.model.config import ModelConfig
from arm.model.io import export_model
from arm.text.formats import format_prompt
from arm.text.tokenizer import encode_texts, train_bpe, wrap

SMALL = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                    max_position_embeddings=128)
CAPTION = "a small red circle in the top left"
QUESTION = "what colour is the circle?"
# the shape of an `arm evaluate` metrics file: headline metrics and `/` breakdowns per benchmark
EVAL = {
    "preset": "micro",
    "model_dir": "models/arm-base",
    "scores": {
        "shapes_geneval": {"overall": 0.4375, "position": 0.5, "novel/overall": 0.25, "judge_agreement": 0.9},
        "understanding": {"vqa_accuracy": 0.625, "pope_f1": 0.71, "oracle/vqa_accuracy": 0.6},
        "shapes_edit": {"success": 0.125, "flag": True},
    },
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    base = train_bpe([CAPTION, QUESTION, "make the square blue", "red", "blue"] * 20, 290)
    tok, layout = wrap(base, 60, (3, 3), (4, 5, 3))
    torch.manual_seed(0)
    model = build_model(SMALL, layout, seed=0).eval()
    manifest = {"visual_tokenizer": {"kind": "visual_tokenizer", "path": "models/tokenizer", "sha256": "abc"},
                "text_tokenizer": "bpe", "pretrain": {"steps": 3, "seed": 0}}
    return export_model(model, tok, layout, manifest, root / "arm-base"), tok, layout


def _snippet(card: ModelCard) -> str:
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert blocks, "the card has no python snippet"
    return blocks[0]


def test_export_writes_a_card_with_hub_metadata_and_layout(exported):
    out, tok, layout = exported
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "any-to-any"
    assert card.data.model_name == "arm-base" and "arm" in card.data.tags
    assert card.data.eval_results is None  # not evaluated yet, and the card says how to
    assert "Not evaluated yet" in card.text
    # the vocabulary table carries the layout's ids
    assert f"| 0 .. {layout.n_text - 1} | text" in card.text
    for name in ("<bos>", "<boi>", "<eoi>", "<sep>", "<uncond>"):
        assert f"| {layout.special(name)} | `{name}` |" in card.text
    assert f"| {layout.image_offset} .. {layout.vocab_size - 1} | image codes" in card.text
    assert "`models/tokenizer`" in card.text  # where the codes become pixels
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # written inside the atomic export


def test_card_snippet_runs_with_plain_transformers(exported):
    """The documented prompts are the ids arm trains on, and the snippet samples 9 image codes and
    an answer from the exported dir with transformers alone."""
    out, tok, layout = exported
    ns: dict = {}
    torch.manual_seed(0)
    exec(compile(_snippet(ModelCard.load(out / "README.md")), "README.md", "exec"), ns)
    caption_ids, question_ids = encode_texts(tok, [CAPTION, QUESTION])
    assert ns["model_dir"] == str(out)
    assert ns["gen_ids"][0].tolist() == format_prompt("generate", layout, text=caption_ids)
    codes = ns["codes"]
    assert len(codes) == layout.tokens_per_image and all(0 <= c < layout.codebook_size for c in codes)
    assert ns["ask_ids"][0].tolist() == format_prompt("understand", layout, text=question_ids, image=codes)
    assert isinstance(ns["answer"], str) and "<img_" not in ns["answer"]


def test_eval_results_become_the_model_index(exported, tmp_path):
    out, _, _ = exported
    copy = tmp_path / "arm-base"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    write_model_card(copy, model_ref="models/arm-base", eval_metrics=EVAL)
    card = ModelCard.load(copy / "README.md")
    got = {(r.dataset_type, r.metric_type): (r.task_type, r.metric_value) for r in card.data.eval_results}
    assert got == {
        ("shapes_edit", "success"): ("image-to-image", 0.125),
        ("shapes_geneval", "judge_agreement"): ("text-to-image", 0.9),
        ("shapes_geneval", "overall"): ("text-to-image", 0.4375),
        ("shapes_geneval", "position"): ("text-to-image", 0.5),
        ("understanding", "pope_f1"): ("visual-question-answering", 0.71),
        ("understanding", "vqa_accuracy"): ("visual-question-answering", 0.625),
    }
    assert "| shapes_geneval | overall | 0.4375 |" in card.text and "micro preset" in card.text
    assert 'model_dir = "models/arm-base"' in card.text
    # the raw YAML is the Hub's model-index schema
    meta = card.data.to_dict()
    assert meta["model-index"][0]["name"] == "arm-base"


def test_eval_metrics_without_scores_is_a_clear_error():
    with pytest.raises(ValueError, match="no `scores` table"):
        eval_results({"geneval": 0.5})
    with pytest.raises(ValueError, match="scores.geneval is float"):
        eval_results({"scores": {"geneval": 0.5}})


def test_package_puts_the_eval_results_in_the_packaged_card(exported, tmp_path):
    """`arm package` re-renders the packaged copy's card with metrics/eval_<name>.json; the source
    dir (a DVC output of pretrain/rl, hashed by the gate) stays as exported."""
    import bentoml

    from arm.serve import store

    out, _, _ = exported
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    model_dir = repo / "models" / "arm-base"
    subprocess.run(["cp", "-r", str(out), str(model_dir)], check=True)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["visual_tokenizer"] = {"kind": "oracle"}  # nothing to copy
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    before = (model_dir / "README.md").read_text()
    (repo / "metrics").mkdir()
    (repo / "metrics" / "eval_arm-base.json").write_text(json.dumps(EVAL))
    tag, _ = store.package_model(model_dir, name="armcard", repo=repo)
    packaged = Path(bentoml.models.get(tag).path) / store.MODEL_SUBDIR
    card = ModelCard.load(packaged / "README.md")
    assert {(r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results} >= {
        ("shapes_geneval", "overall", 0.4375), ("understanding", "vqa_accuracy", 0.625)}
    assert (model_dir / "README.md").read_text() == before
    store.verify_package(packaged, bentoml.models.get(tag).info.metadata, full=True)  # hashes cover the new card


def test_card_of_a_model_with_aspect_buckets_opens_images_with_their_grid(tmp_path):
    """With several grids the documented prompts carry the default grid's token, and the snippet
    still reproduces the ids arm trains on."""
    base = train_bpe([CAPTION, QUESTION, "make the square blue", "red", "blue"] * 20, 290)
    tok, layout = wrap(base, 60, (3, 3), (4, 5, 3), ((3, 3), (3, 4), (4, 3)))
    model = build_model(SMALL, layout, seed=0).eval()
    out = export_model(model, tok, layout, {"visual_tokenizer": {"path": "models/tokenizer"}}, tmp_path / "arm-base")
    card = ModelCard.load(out / "README.md")
    assert "3 aspect buckets (h x w tokens:\n3x3, 3x4, 4x3)" in card.text and "`<boi><grid_HxW>`" in card.text
    ns: dict = {}
    torch.manual_seed(0)
    exec(compile(_snippet(card), "README.md", "exec"), ns)
    caption_ids, question_ids = encode_texts(tok, [CAPTION, QUESTION])
    assert ns["gen_ids"][0].tolist() == format_prompt("generate", layout, text=caption_ids)
    assert ns["gen_ids"][0].tolist()[-1] == layout.grid_token((3, 3))
    assert ns["ask_ids"][0].tolist() == format_prompt("understand", layout, text=question_ids, image=ns["codes"])
