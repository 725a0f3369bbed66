"""Tokenizer training data parallel on 2 CPU ranks (gloo, torchrun): each rank trains on its half of
every global batch, so with losses that are means over the batch the 2-rank run follows the
1-process run step for step; a 2-rank run stopped and resumed is bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arm.curves import read_curve
from arm.tokenizer.model import VisualTokenizer

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
pytestmark = pytest.mark.xdist_group("tokenizer")

# Only losses that are means over equal-sized per-image terms: their gradient over the whole batch
# is the mean of the two halves' gradients, which is what DDP averages. (Contrastive, caption and
# code-usage terms compare images within a batch, so a half batch gives a different loss.)
MEAN_LOSSES = ["tokenizer.loss.contrastive=0", "tokenizer.loss.caption=0", "tokenizer.loss.usage=0",
               "tokenizer.train.teacher_batch=null", "tokenizer.train.steps=8", "tokenizer.train.checkpoint_every=4",
               "tokenizer.train.lr=0.003"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from arm.config import load_config
    from arm.data.curate import curate

    root = tmp_path_factory.mktemp("tokdp")
    cfg = load_config(PARAMS, preset="micro", overrides=[f"data.store={root}/curated", f"data.metrics={root}/curate.json"])
    curate(cfg, progress=False)
    return root / "curated"


def _overrides(store: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.store={store}", f"tokenizer.output={out}/model", f"tokenizer.checkpoint_dir={out}/ckpt",
            f"tokenizer.metrics={out}/metrics.json", f"tokenizer.plots={out}/curve", f"tokenizer.report={out}/report",
            f"tokenizer.text_cache={out.parent}/textcache", "tokenizer.eval.zeroshot_limit=20",
            "tokenizer.eval.probe_train=20", *MEAN_LOSSES, *extra]


def _curve(out: Path) -> list[dict[str, float]]:
    return read_curve(out / "curve")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return VisualTokenizer.from_pretrained(out / "model").state_dict()


def test_two_ranks_follow_one_process_and_resume_exactly(store, tmp_path):
    from arm.config import load_config
    from arm.tokenizer.launch import train_tokenizer_multiprocess
    from arm.tokenizer.train import train_tokenizer

    one = tmp_path / "one"
    train_tokenizer(load_config(PARAMS, "micro", _overrides(store, one)), progress=False, evaluate=False)

    two = tmp_path / "two"
    metrics = train_tokenizer_multiprocess(str(PARAMS), "micro", _overrides(store, two), nproc=2)
    assert metrics["processes"] == 2 and metrics["train_steps"] == 8
    a, b = _curve(one), _curve(two)
    assert [r["step"] for r in b] == list(range(1, 9)) and a[0].keys() == b[0].keys()
    # each rank's half of the batch: had both ranks taken the same rows, or any row twice, the
    # averaged gradient (and so every later loss) would differ from the whole batch's
    for ra, rb in zip(a, b):
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (ra["step"], k)
    assert b[-1]["l2"] < b[0]["l2"] and b[-1]["loss"] < b[0]["loss"]
    wa, wb = _weights(one), _weights(two)
    # Reduction order differs between one process and two; Adam turns that float noise, on a
    # weight whose gradient is near zero, into a fraction of one step's move (~lr). A tenth of
    # lr bounds it; a wrong split of the batch shows in the losses above by far more.
    lr = load_config(PARAMS, "micro").tokenizer.train.lr
    assert all(torch.allclose(wa[k], wb[k], atol=0.1 * lr) for k in wa)

    cut = tmp_path / "cut"
    stopped = train_tokenizer_multiprocess(str(PARAMS), "micro", _overrides(store, cut), nproc=2, stop_at=5)
    assert stopped == {"stopped_at": 5} and not (cut / "model").exists()
    train_tokenizer_multiprocess(str(PARAMS), "micro", _overrides(store, cut), nproc=2)
    assert _curve(cut) == b  # every rank's RNG, the optimizer and the schedule restored
    wc = _weights(cut)
    assert all(torch.equal(wb[k], wc[k]) for k in wb)


def test_streamed_in_decode_workers_trains_as_in_memory(store, tmp_path):
    """A set too large for cache_mb is read from the store by 2 DataLoader workers, ahead of the
    step: the same pixels in the same order as the in-memory set, so the same run."""
    from arm.config import load_config
    from arm.tokenizer.train import train_tokenizer

    def run(name: str, *extra: str) -> list[dict[str, float]]:
        out = tmp_path / name
        cfg = load_config(PARAMS, "micro", _overrides(store, out, "tokenizer.train.steps=4", *extra))
        train_tokenizer(cfg, progress=False, evaluate=False)
        return _curve(out)

    memory = run("memory")
    streamed = run("streamed", "tokenizer.train.cache_mb=0", "tokenizer.train.workers=2")
    assert streamed == memory and len(memory) == 4
