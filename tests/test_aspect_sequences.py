"""Images of several aspect buckets in the unified vocabulary: grid tokens, sequence formats,
constrained decoding at a requested grid, packed and streamed documents of mixed grids."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models

from arm.sample.engine import Engine, Request
from arm.sample.pipeline import uncond_prompt
from arm.text.formats import format_example, format_prompt
from arm.text.sequences import TASK_INDEX, Example, TokExample, document, pack
from arm.text.tokenizer import wrap
from arm.text.vocab import SPECIAL_TOKENS, VocabLayout
from arm.train.shards import DocumentStream, write_documents
from tests.test_sample import tiny_model

SQUARE = VocabLayout(n_text=40, codebook_size=45, grid=(3, 3), levels=(5, 3, 3))
GRIDS = ((3, 3), (3, 4), (4, 3))
MULTI = VocabLayout(n_text=40, codebook_size=45, grid=(3, 3), levels=(5, 3, 3), grids=GRIDS)


def codes(n: int, start: int = 0) -> list[int]:
    return [(start + 7 * i) % 45 for i in range(n)]


def test_one_grid_layout_is_unchanged():
    assert SQUARE.grids == ((3, 3),) and not SQUARE.multi_grid
    assert SQUARE.image_offset == 40 + len(SPECIAL_TOKENS) and SQUARE.vocab_size == 40 + len(SPECIAL_TOKENS) + 45
    assert SQUARE.grid_token((3, 3)) is None
    assert "grids" not in SQUARE.to_json()  # the layout file of a square model stays as it was
    assert VocabLayout.from_json(SQUARE.to_json()) == SQUARE
    ids, _ = format_example("generate", SQUARE, text=[1, 2], target_image=codes(9))
    assert ids == [SQUARE.bos, 1, 2, SQUARE.boi, *(SQUARE.image_offset + c for c in codes(9)), SQUARE.eoi, SQUARE.eos]


def test_grid_tokens_sit_among_the_specials():
    fixed = 40 + len(SPECIAL_TOKENS)
    assert [MULTI.grid_token(g) for g in GRIDS] == [fixed, fixed + 1, fixed + 2]
    assert MULTI.image_offset == fixed + 3 and MULTI.vocab_size == fixed + 3 + 45
    assert [MULTI.grid_of_token(fixed + i) for i in range(3)] == list(GRIDS)
    assert MULTI.grid_of_token(MULTI.boi) is None and MULTI.grid_of_token(MULTI.image_offset) is None
    assert MULTI.special("<grid_3x4>") == fixed + 1
    assert VocabLayout.from_json(MULTI.to_json()) == MULTI
    assert MULTI.max_tokens_per_image == 12 and MULTI.n_codes((4, 3)) == 12
    with pytest.raises(ValueError, match=r"grid \[2, 6\] is not one of"):
        MULTI.check_grid((2, 6))
    with pytest.raises(ValueError, match="must start with the default grid"):
        VocabLayout(n_text=40, codebook_size=45, grid=(3, 3), levels=(5, 3, 3), grids=((3, 4), (3, 3)))


def test_hf_tokenizer_carries_the_grid_tokens():
    base = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok, layout = wrap(base, 45, (3, 3), (5, 3, 3), GRIDS)
    assert layout.grids == GRIDS and len(tok) == layout.vocab_size
    assert tok.convert_tokens_to_ids("<grid_4x3>") == layout.grid_token((4, 3))
    assert tok.convert_tokens_to_ids("<img_0>") == layout.image_offset


def test_formats_open_every_image_with_its_grid():
    g34 = MULTI.grid_token((3, 4))
    ids, mask = format_example("generate", MULTI, text=[5], target_image=codes(12), target_grid=(3, 4))
    assert ids[:4] == [MULTI.bos, 5, MULTI.boi, g34]
    assert ids[4:16] == [MULTI.image_offset + c for c in codes(12)] and ids[16:] == [MULTI.eoi, MULTI.eos]
    # the grid is the user's request, part of the prompt: never a loss target
    assert mask == [0] * 4 + [1] * 14
    assert format_prompt("generate", MULTI, text=[5], target_grid=(3, 4)) == ids[:4]
    ids, _ = format_example("understand", MULTI, image=codes(12), image_grid=(4, 3), text=[6], target_text=[7])
    assert ids[:3] == [MULTI.bos, MULTI.boi, MULTI.grid_token((4, 3))]
    with pytest.raises(ValueError, match=r"grid \[3, 4\] has 12 codes, got 9"):
        format_example("generate", MULTI, text=[5], target_image=codes(9), target_grid=(3, 4))
    prompt = format_prompt("edit", MULTI, image=codes(12), image_grid=(3, 4), text=[8, 9], target_grid=(3, 4))
    assert uncond_prompt(prompt, MULTI)[-3:] == [MULTI.uncond, MULTI.boi, g34]
    assert uncond_prompt(format_prompt("generate", MULTI, text=[5], target_grid=(4, 3)), MULTI) == [
        MULTI.bos, MULTI.uncond, MULTI.boi, MULTI.grid_token((4, 3))]


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab=MULTI.vocab_size)


def gen(grid, seed, text=(1, 2, 3), **kw):
    p = format_prompt("generate", MULTI, text=list(text), target_grid=grid)
    return Request(p, uncond_prompt(p, MULTI), cfg_scale=2.0, seed=seed, **kw)


def test_decoding_is_constrained_to_the_requested_grid(model):
    reqs = [gen((3, 3), 1), gen((3, 4), 2), gen((4, 3), 3),
            Request(format_prompt("understand", MULTI, image=codes(12), image_grid=(3, 4), text=[4]),
                    max_new_tokens=6, seed=4)]
    out = Engine(model, MULTI).run(reqs)
    for r, grid in zip(out[:3], GRIDS):
        n = grid[0] * grid[1]
        assert r.finished and r.grid == grid and len(r.tokens) == n + 1 and r.tokens[-1] == MULTI.eoi
        assert bool(MULTI.is_image(torch.tensor(r.tokens[:n])).all())
        assert tuple(r.codes(MULTI).shape) == grid
    assert out[3].mode == "text" and out[3].grid is None
    # a request's tokens depend on its own seed and grid only: alone, batched or speculative
    for i, req in enumerate(reqs[:3]):
        assert Engine(model, MULTI).run([req])[0].tokens == out[i].tokens
    assert [r.tokens for r in Engine(model, MULTI, jacobi_window=3).run(reqs)] == [r.tokens for r in out]


def test_an_image_prompt_without_its_grid_is_refused(model):
    bare = format_prompt("generate", SQUARE, text=[1, 2])  # ends with <boi>: no grid named
    with pytest.raises(ValueError, match=r"request 0: .*must end with <boi> <grid_HxW>"):
        Engine(model, MULTI).run([Request(bare, mode="image")])


def mixed_examples():
    out = []
    for i, grid in enumerate([None, (3, 4), (4, 3), None, (3, 4)]):
        n = 9 if grid is None else 12
        out.append(TokExample(Example(f"g{i}", "generate", "train", target_image=tuple(codes(n, i)), target_grid=grid),
                              (1 + i, 2), ()))
        out.append(TokExample(Example(f"e{i}", "edit", "train", image=tuple(codes(n, 2 * i)), image_grid=grid,
                                      target_image=tuple(codes(n, 3 * i)), target_grid=grid), (3,), ()))
    return out


def test_packing_mixes_grid_sizes():
    docs = [(*document(ex, MULTI), TASK_INDEX[ex.task]) for ex in mixed_examples()]
    assert sorted({len(d[0]) for d in docs}) == [16, 19, 27, 33]
    rows = pack(docs, 64, MULTI.pad)
    assert sum(r.n_docs for r in rows) == len(docs)
    assert sum(64 - r.n_pad for r in rows) == sum(len(d[0]) for d in docs)
    for r in rows:  # every packed image span holds exactly its grid's codes
        ids = r.input_ids.tolist()
        for k, t in enumerate(ids):
            grid = MULTI.grid_of_token(t)
            if grid is not None:
                n = grid[0] * grid[1]
                assert ids[k - 1] == MULTI.boi and ids[k + 1 + n] == MULTI.eoi


def test_shards_keep_each_images_grid(tmp_path):
    examples = mixed_examples()
    write_documents(iter(examples), str(tmp_path / "docs"), storage=None, docs_per_shard=4, row_group_docs=2, meta={})
    stream = DocumentStream(str(tmp_path / "docs"), rank=0, world_size=1, layout=MULTI, seq_len=64,
                            weights={"generate": 1.0, "edit": 1.0}, cfg_dropout=0.0, seed=0, block_docs=4)
    seen = {}
    for task in ("generate", "edit"):
        for after, ex in stream.documents(task):
            if after["epoch"] > 0:
                break
            seen[ex.example.id] = ex.example
    assert len(seen) == len(examples)
    for ex in examples:
        e, got = ex.example, seen[ex.example.id]
        assert (got.image, got.image_grid, got.target_image, got.target_grid) == (
            e.image, None if e.image_grid is None else tuple(e.image_grid), e.target_image,
            None if e.target_grid is None else tuple(e.target_grid))


def test_shards_written_before_grids_read_as_the_default_grid(tmp_path):
    """A run dir's documents from before aspect buckets (no grid columns) stay readable, so a
    square run resumes across the change instead of failing on its own shards."""
    import pyarrow.parquet as pq

    square = [ex for ex in mixed_examples() if ex.example.target_grid is None]
    url = tmp_path / "docs"
    write_documents(iter(square), str(url), storage=None, docs_per_shard=4, row_group_docs=2, meta={})
    for part in url.glob("*/part-*.parquet"):
        old = pq.read_table(part).drop_columns(["image_grid", "target_grid"])
        pq.write_table(old, part, row_group_size=2)
    stream = DocumentStream(str(url), rank=0, world_size=1, layout=SQUARE, seq_len=64,
                            weights={"generate": 1.0, "edit": 1.0}, cfg_dropout=0.0, seed=0, block_docs=4)
    seen = {}
    for task in ("generate", "edit"):
        for after, ex in stream.documents(task):  # an endless stream of epochs: read the first
            if after["epoch"] > 0:
                break
            seen[ex.example.id] = ex.example
    assert set(seen) == {ex.example.id for ex in square}
    assert all(e.image_grid is None and e.target_grid is None for e in seen.values())
    assert next(stream.rows())[1].n_docs >= 1
