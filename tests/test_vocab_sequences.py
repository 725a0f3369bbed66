"""Text tokenizer vs the vocabulary layout, the task formats with their loss masks, and packing."""

from __future__ import annotations

import pytest
import torch

from arm.text.sequences import (
    TASK_INDEX,
    Example,
    document,
    eval_rows,
    pack,
    tokenize_examples,
)
from arm.text.tokenizer import build_tokenizer, encode_texts, image_token, load_tokenizer, save_tokenizer
from arm.text.vocab import SPECIAL_TOKENS
from arm.train.data import shapes_examples, training_texts
from arm.train.perfect import PerfectTokenizer


@pytest.fixture(scope="module")
def shapes_set():
    from arm.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "params.yaml", preset="micro", overrides=["pretrain.data=shapes", "pretrain.images=oracle"])
    return cfg, shapes_examples(cfg)


@pytest.fixture(scope="module")
def tok_layout(shapes_set):
    cfg, data = shapes_set
    spec = data.image
    return build_tokenizer(cfg.text, training_texts(data.train), spec.codebook_size, spec.grid, spec.levels)


# ----------------------------------------------------------------------------- vocabulary


def test_layout_matches_hf_tokenizer_ids(tok_layout, tmp_path):
    tok, layout = tok_layout
    assert len(tok) == layout.vocab_size
    for name in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(name) == layout.special(name)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.sep_token_id) == (
        layout.bos, layout.eos, layout.pad, layout.sep)
    for c in range(layout.codebook_size):
        assert tok.convert_tokens_to_ids(image_token(c)) == layout.image_offset + c
    ids = encode_texts(tok, ["a small red circle in the top left"])[0]
    assert ids and all(i < layout.n_text for i in ids)
    # an image token written in text maps to its id, and skip_special_tokens drops it
    mixed = tok(f"a red circle{image_token(3)}", add_special_tokens=False)["input_ids"]
    assert mixed[-1] == layout.image_offset + 3
    assert tok.decode(mixed, skip_special_tokens=True) == "a red circle"

    save_tokenizer(tok, layout, tmp_path)
    tok2, layout2 = load_tokenizer(tmp_path)  # AutoTokenizer.from_pretrained + layout check
    assert layout2 == layout
    assert tok2(f"make the square blue{image_token(5)}", add_special_tokens=False)["input_ids"] == \
        tok(f"make the square blue{image_token(5)}", add_special_tokens=False)["input_ids"]


def test_hub_tokenizer_missing_offline_is_a_clear_error():
    from arm.model.config import TextConfig

    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        build_tokenizer(TextConfig(tokenizer="no-such-org/no-such-tokenizer"), None, 45, (3, 3), (5, 3, 3))


def test_perfect_tokenizer_roundtrip(shapes_set):
    cfg, data = shapes_set
    perfect = PerfectTokenizer(cfg.world)
    from arm.data.shapes import Scene

    for ex in data.train[:50]:
        if ex.task == "generate" and "scene" in ex.meta:
            scene = Scene.from_json(ex.meta["scene"])
            codes = perfect.encode_scene(scene)
            assert tuple(codes) == ex.target_image
            back, invalid = perfect.decode_scene(codes)
            assert back == scene and invalid == 0
    digits = perfect.codes_to_levels(torch.arange(perfect.codebook_size))
    recon = digits[:, 0] + perfect.levels[0] * (digits[:, 1] + perfect.levels[1] * digits[:, 2])
    assert torch.equal(recon, torch.arange(perfect.codebook_size))


# ----------------------------------------------------------------------------- formats


def _one(data, task):
    return next(e for e in data.train if e.task == task)


def test_formats_and_loss_masks(shapes_set, tok_layout):
    _, data = shapes_set
    tok, L = tok_layout
    docs = {t: tokenize_examples([_one(data, t)], lambda x: encode_texts(tok, x))[0] for t in TASK_INDEX}
    n = L.tokens_per_image

    ids, mask = document(docs["understand"], L)
    q, a = list(docs["understand"].text_ids), list(docs["understand"].answer_ids)
    assert ids == [L.bos, L.boi, *(L.image_offset + c for c in docs["understand"].example.image), L.eoi, *q, L.sep, *a, L.eos]
    assert mask == [0] * (n + 4 + len(q)) + [1] * (len(a) + 1)

    ids, mask = document(docs["generate"], L)
    cap = list(docs["generate"].text_ids)
    assert ids[: len(cap) + 2] == [L.bos, *cap, L.boi] and ids[-2:] == [L.eoi, L.eos]
    assert mask == [0] * (len(cap) + 2) + [1] * (n + 2)
    ids_u, mask_u = document(docs["generate"], L, uncond=True)
    assert ids_u[:3] == [L.bos, L.uncond, L.boi] and ids_u[3:] == ids[len(cap) + 2:]
    assert sum(mask_u) == sum(mask)

    ex = docs["edit"].example
    ids, mask = document(docs["edit"], L)
    ins = list(docs["edit"].text_ids)
    src = [L.image_offset + c for c in ex.image]
    tgt = [L.image_offset + c for c in ex.target_image]
    assert ids == [L.bos, L.boi, *src, L.eoi, *ins, L.boi, *tgt, L.eoi, L.eos]
    assert mask == [0] * (n + 4 + len(ins)) + [1] * (n + 2)
    ids_u, _ = document(docs["edit"], L, uncond=True)
    assert ids_u == [L.bos, L.boi, *src, L.eoi, L.uncond, L.boi, *tgt, L.eoi, L.eos]

    ids, mask = document(docs["text"], L)
    assert ids[0] == L.bos and ids[-1] == L.eos and mask == [0] + [1] * (len(ids) - 1)


def test_bad_example_names_itself(tok_layout):
    tok, L = tok_layout
    bad = Example("x1", "generate", "train", text="a red circle", target_image=(1, 2))
    with pytest.raises(ValueError, match="x1.*codes"):
        document(tokenize_examples([bad], lambda x: encode_texts(tok, x))[0], L)


# ----------------------------------------------------------------------------- packing


def test_pack_isolates_documents_and_keeps_every_token():
    docs = [([1] * n, [0] + [1] * (n - 1), i % 4) for i, n in enumerate([5, 9, 3, 12, 7, 7, 2, 16])]
    rows = pack(docs, 16, pad_id=0)
    assert sum(r.n_docs for r in rows) == len(docs)
    assert sum(16 - r.n_pad for r in rows) == sum(len(d[0]) for d in docs)
    for r in rows:
        assert r.input_ids.shape == (16,)
        # each document (and the padding) restarts its positions at 0
        starts = (r.position_ids == 0).sum().item()
        assert starts == r.n_docs + (1 if r.n_pad else 0)
        assert (r.task_ids[-r.n_pad:] == -1).all() if r.n_pad else True
        assert r.loss_mask[r.task_ids == -1].sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        pack([([1] * 20, [1] * 20, 0)], 16, 0)


def _stream(docs, L, root, **kw):
    """The training stream of one rank in a world of one, over `docs` written as token shards."""
    from arm.train.shards import DocumentStream, write_documents

    if not (root / "manifest.json").exists():
        write_documents(docs, str(root), storage=None, docs_per_shard=512, row_group_docs=64, meta={})
    return DocumentStream(str(root), rank=0, world_size=1, layout=L, **kw)


def _shapes_stream(shapes_set, tok_layout, root, **kw):
    cfg, data = shapes_set
    tok, L = tok_layout
    docs = tokenize_examples(data.train, lambda x: encode_texts(tok, x))
    args = dict(seq_len=128, weights=cfg.text.task_weights, cfg_dropout=0.3, seed=0, block_docs=64)
    args.update(kw)
    return _stream(docs, L, root, **args)


def _blocks(stream, n: int) -> list:
    """Every row of the stream's first n blocks."""
    rows = []
    for after, row in stream.rows():
        rows.append(row)
        if after["block"] == n:
            return rows


def test_stream_is_deterministic_and_seekable(shapes_set, tok_layout, tmp_path):
    s1, s2 = _shapes_stream(shapes_set, tok_layout, tmp_path), _shapes_stream(shapes_set, tok_layout, tmp_path)
    it = s1.rows()
    seq = [next(it) for _ in range(30)]
    pos, _ = seq[11]  # resume from the position after row 11
    resumed = s2.rows(pos)
    for (_, a), (_, b) in zip(seq[12:], [next(resumed) for _ in range(18)]):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
    other = next(_shapes_stream(shapes_set, tok_layout, tmp_path, seed=1).rows())[1]
    assert not torch.equal(other.input_ids, seq[0][1].input_ids)


def test_mixture_weights_and_cfg_dropout(shapes_set, tok_layout, tmp_path):
    _, L = tok_layout
    s = _shapes_stream(shapes_set, tok_layout, tmp_path,
                       weights={"understand": 2.0, "generate": 1.0, "edit": 1.0, "text": 0.0}, block_docs=80)
    assert s.quotas == {"understand": 40, "generate": 20, "edit": 20}
    rows = _blocks(s, 6)
    ids = torch.cat([r.input_ids for r in rows])
    task = torch.cat([r.task_ids for r in rows])
    starts = torch.cat([r.position_ids for r in rows]) == 0
    doc_tasks = task[starts & (task >= 0)]
    counts = torch.bincount(doc_tasks, minlength=4).tolist()
    assert counts == [240, 120, 120, 0]
    # CFG: about 30% of generate/edit documents have <uncond> as their condition
    n_uncond = int((ids == L.uncond).sum())
    assert 0.2 < n_uncond / 240 < 0.4


def test_padding_waste_under_10_percent_on_tiny_mix(tok_layout, tmp_path):
    """The tiny preset's mix (its seq_len, block and weights) on shapes documents."""
    from arm.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "params.yaml", preset="tiny",
                      overrides=["pretrain.data=shapes", "pretrain.images=oracle", "data.sources=[{type: shapes, n_scenes: 400}]"])
    data = shapes_examples(cfg)
    tok, L = tok_layout
    docs = tokenize_examples(data.train, lambda x: encode_texts(tok, x))
    s = _stream(docs, L, tmp_path, seq_len=cfg.text.seq_len, weights=cfg.text.task_weights,
                cfg_dropout=cfg.text.cfg_dropout, seed=0, block_docs=cfg.text.pack_block)
    rows = _blocks(s, 4)
    assert sum(r.n_pad for r in rows) / sum(len(r.input_ids) for r in rows) < 0.10
    assert sum(s.too_long.values()) == 0


def test_eval_rows_are_per_task_and_unbiased(shapes_set, tok_layout):
    _, data = shapes_set
    tok, L = tok_layout
    docs = tokenize_examples(data.train, lambda x: encode_texts(tok, x))
    rows = eval_rows(docs, L, 128, max_rows=2)
    assert set(rows) >= {"understand", "generate", "edit"}
    for task, rs in rows.items():
        assert 1 <= len(rs) <= 3
        assert set(torch.cat([r.task_ids for r in rs]).unique().tolist()) <= {-1, TASK_INDEX[task]}
        assert not any((r.input_ids == L.uncond).any() for r in rs)
