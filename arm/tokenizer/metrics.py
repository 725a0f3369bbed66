"""Held-out metrics of a visual tokenizer (issue 3, item 5).

Reconstruction (PSNR, SSIM) and code statistics on the val split, as arm/eval/image_metrics.py
defines them for the benchmark too; the shapes oracle's scene-exact accuracy on reconstructed
shapes images; image->caption retrieval R@1 on shapes val; on the Fashion-MNIST test set (never
trained on): text-aligned zero-shot classification with class prompts through the frozen text
encoder, and a linear probe (scikit-learn logistic regression) on pooled token features.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from arm.eval.image_metrics import code_stats, reconstruction_metrics
from arm.tokenizer.data import ImageTextSet, Part
from arm.tokenizer.geometry import shapes_geometry
from arm.tokenizer.model import VisualTokenizer

log = logging.getLogger(__name__)


@torch.no_grad()
def _encode_set(model: VisualTokenizer, data: ImageTextSet, batch: int, want_recon: bool = True):
    """codes [N, h*w], recon uint8 [N,3,H,W] (optional), aligned emb [N, d], pooled features [N, D]."""
    codes, recons, embs, pooled = [], [], [], []
    dev = model.device
    for i in range(0, len(data), batch):
        x = data.pixels(range(i, min(i + batch, len(data)))).to(dev).float() / 255.0
        grid = model.grid_of(x)
        q, c = model.quantize(x)
        feats = model.features(q, grid)
        codes.append(c.cpu())
        embs.append(model.align(feats).cpu())
        pooled.append(feats.mean(1).cpu())
        if want_recon:
            r = model.reconstruct(q, grid).clamp(0, 1)
            recons.append((r * 255.0).round().to(torch.uint8).cpu())
    out = {
        "codes": torch.cat(codes),
        "emb": torch.cat(embs),
        "pooled": torch.cat(pooled),
    }
    if want_recon:
        out["recon"] = torch.cat(recons)
    return out


def oracle_accuracy(recon_u8: torch.Tensor, scenes: list[list[dict]], world) -> dict[str, float]:
    """Fraction of images whose reconstruction the oracle parses into exactly the true scene."""
    from arm.data.oracle import parse
    from arm.data.shapes import Scene

    exact, cells_ok, cells = 0, 0, 0
    for img, scene_json in zip(recon_u8, scenes):
        truth = Scene.from_json(scene_json)
        pred = parse(Image.fromarray(img.permute(1, 2, 0).numpy()), world)
        exact += pred == truth
        t = {(o.row, o.col): o for o in truth.objects}
        p = {(o.row, o.col): o for o in pred.objects}
        for r in range(world.grid):
            for c in range(world.grid):
                cells += 1
                cells_ok += t.get((r, c)) == p.get((r, c))
    n = max(1, len(scenes))
    return {"oracle_scene_accuracy": exact / n, "oracle_cell_accuracy": cells_ok / max(1, cells)}


def cell_state_codes(codes: torch.Tensor, scenes: list[list[dict]], world) -> dict[str, float]:
    """How many of the world's cell states (empty, or size+colour+kind) get a code of their own.

    A state's code is its most frequent one; a state "owns" it when no other state's most
    frequent code is the same. States sharing a code cannot be told apart by any decoder, so
    this bounds the oracle accuracy from the encoder side (reconstruction quality is the other).
    """
    from collections import Counter, defaultdict

    from arm.data.shapes import Scene, cell_states

    seen: dict[int, Counter] = defaultdict(Counter)
    for row, scene_json in zip(codes.view(len(scenes), -1).tolist(), scenes):
        for state, code in zip(cell_states(Scene.from_json(scene_json), world), row):
            seen[state][code] += 1
    top = {state: counts.most_common(1)[0][0] for state, counts in seen.items()}
    sharing = Counter(top.values())
    return {"cell_states": len(top), "cell_states_with_own_code": sum(sharing[code] == 1 for code in top.values())}


def retrieval_r1(model: VisualTokenizer, emb: torch.Tensor, texts: list[list[str]]) -> dict[str, float]:
    """Image -> caption R@1 among all distinct captions of the set (any of an image's captions counts)."""
    keep = [i for i, ts in enumerate(texts) if ts]
    if not keep:
        return {"retrieval_r1": float("nan"), "retrieval_candidates": 0}
    pool = sorted({t for i in keep for t in texts[i]})
    index = {t: j for j, t in enumerate(pool)}
    text_emb = model.embed_texts(pool)
    top = (emb[keep] @ text_emb.T).argmax(1)
    hits = sum(int(top[k]) in {index[t] for t in texts[i]} for k, i in enumerate(keep))
    return {"retrieval_r1": hits / len(keep), "retrieval_candidates": len(pool)}


class FashionSet(NamedTuple):
    """Fashion-MNIST images seen through a tokenizer: aligned embeddings [N, d], mean-pooled
    features [N, D], codes [N, h*w] and labels [N]."""

    emb: torch.Tensor
    pooled: torch.Tensor
    codes: torch.Tensor
    labels: np.ndarray

    def head(self, n: int) -> "FashionSet":
        return FashionSet(self.emb[:n], self.pooled[:n], self.codes[:n], self.labels[:n])


@torch.no_grad()
def embed_fashion(model: VisualTokenizer, cfg_eval, subset: str, limit: int | None) -> FashionSet:
    """The first `limit` images of a Fashion-MNIST subset ("train" or "t10k") through the tokenizer."""
    from arm.data.sources import fashion_mnist as fm
    from arm.tokenizer.images import pil_to_uint8

    root = Path(cfg_eval.fashion_mnist_root)
    images, labels = fm.read_idx(root / f"{subset}-images-idx3-ubyte.gz", root / f"{subset}-labels-idx1-ubyte.gz", limit)
    pixels = torch.from_numpy(np.stack([pil_to_uint8(Image.fromarray(im), model.image_size) for im in images]))
    embs, pooled, codes = [], [], []
    for i in range(0, len(pixels), cfg_eval.batch_size):
        x = pixels[i : i + cfg_eval.batch_size].to(model.device).float() / 255.0
        q, c = model.quantize(x)
        f = model.features(q)
        embs.append(model.align(f).cpu())
        pooled.append(f.mean(1).cpu())
        codes.append(c.cpu())
    return FashionSet(torch.cat(embs), torch.cat(pooled), torch.cat(codes), labels.astype(np.int64))


def one_hot_codes(codes: torch.Tensor, codebook_size: int) -> np.ndarray:
    """codes [N, T] -> [N, T * codebook_size] indicators: which code sits at each position."""
    n, t = codes.shape
    out = np.zeros((n, t * codebook_size), dtype=np.float32)
    out[np.arange(n)[:, None], np.arange(t)[None, :] * codebook_size + codes.numpy()] = 1.0
    return out


def fashion_zeroshot(model: VisualTokenizer, test: FashionSet, prompts: list[str]) -> dict[str, float]:
    """Accuracy of the nearest class prompt (through the text encoder), per template and ensembled."""
    from arm.data.sources import fashion_mnist as fm

    phrases = [fm.PHRASES[c] for c in fm.CLASSES]
    # A prompt that is a training caption measures recall of that caption, not zero-shot transfer.
    captions = {fm.caption(k).lower() for k in range(len(fm.CLASSES))}
    for template in prompts:
        seen = sorted({template.format(p).lower().rstrip(".") for p in phrases} & captions)
        if seen:
            raise ValueError(f"tokenizer.eval.prompts: template {template!r} renders training captions such as "
                             f"{seen[0]!r}; zero-shot prompts must differ from what the tokenizer was trained on")
    out: dict[str, float] = {}
    class_embs = []
    for k, template in enumerate(prompts):
        e = model.embed_texts([template.format(p) for p in phrases])
        class_embs.append(e)
        out[f"fashion_zeroshot_template{k}"] = float(((test.emb @ e.T).argmax(1).numpy() == test.labels).mean())
    ensemble = torch.nn.functional.normalize(torch.stack(class_embs).mean(0), dim=-1)
    out["fashion_zeroshot_accuracy"] = float(((test.emb @ ensemble.T).argmax(1).numpy() == test.labels).mean())
    return out


def fashion_probes(train: FashionSet, test: FashionSet, codebook_size: int, seed: int) -> dict[str, float]:
    """Logistic-regression probes fit on `train`, scored on `test`: on the pooled features, and on
    the codes alone. The code probe measures the class information that survives quantization,
    which bounds what any head reading the codes (the alignment head included) can reach."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train.pooled.numpy())
    inputs = {
        "fashion_linear_probe_accuracy": (scaler.transform(train.pooled.numpy()), scaler.transform(test.pooled.numpy())),
        "fashion_code_probe_accuracy": (one_hot_codes(train.codes, codebook_size), one_hot_codes(test.codes, codebook_size)),
    }
    out = {}
    for name, (x_train, x_test) in inputs.items():
        probe = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x_train, train.labels)
        out[name] = float(probe.score(x_test, test.labels))
    return out


def fashion_metrics(model: VisualTokenizer, cfg_eval, seed: int) -> dict[str, float]:
    """Zero-shot (class prompts through the text encoder) and linear-probe accuracies on t10k."""
    test = embed_fashion(model, cfg_eval, "t10k", cfg_eval.zeroshot_limit)
    train = embed_fashion(model, cfg_eval, "train", cfg_eval.probe_train)
    return {"fashion_test_images": len(test.labels), **fashion_zeroshot(model, test, cfg_eval.prompts),
            **fashion_probes(train, test, model.codebook_size, seed)}


def bucket_reconstruction(model: VisualTokenizer, parts: list[Part], ecfg) -> dict[str, float]:
    """Per aspect bucket of the val split (each image framed at its own bucket): how many images
    and their reconstructions' PSNR and SSIM, as `val_<h>x<w>_images` / `_psnr` / `_ssim`."""
    out: dict[str, float] = {}
    for part in parts:
        data = part.images
        if ecfg.val_limit is not None and len(data) > ecfg.val_limit:
            data = data.subset(range(ecfg.val_limit))
        key = f"val_{part.grid[0]}x{part.grid[1]}"
        recon = _encode_set(model, data, ecfg.batch_size)["recon"]
        out[f"{key}_images"] = len(data)
        out.update({f"{key}_{k}": v for k, v in reconstruction_metrics(recon, data.pixels(range(len(data)))).items()})
    return out


def evaluate(model: VisualTokenizer, val: ImageTextSet, cfg, with_fashion: bool = True) -> dict[str, float]:
    """All held-out metrics; `cfg` is the ArmConfig (world for the oracle, tokenizer.eval for limits)."""
    from arm.data.shapes import Scene

    ecfg = cfg.tokenizer.eval
    model.eval()
    if ecfg.val_limit is not None and len(val) > ecfg.val_limit:
        val = val.subset(range(ecfg.val_limit))
    metrics: dict[str, float] = {"val_images": len(val)}
    if len(val):
        enc = _encode_set(model, val, ecfg.batch_size)
        target = val.pixels(range(len(val)))
        metrics.update({f"val_{k}": v for k, v in reconstruction_metrics(enc["recon"], target).items()})
        metrics.update(code_stats(enc["codes"], model.codebook_size))
        # scenes of the world's square grid: the grid the oracle and the cell metrics read
        shapes_idx = [i for i, s in enumerate(val.scenes) if s is not None and Scene.from_json(s).grid is None]
        metrics["shapes_val_images"] = len(shapes_idx)
        if shapes_idx:
            sel = torch.as_tensor(shapes_idx)
            metrics.update({f"shapes_{k}": v for k, v in reconstruction_metrics(enc["recon"][sel], target[sel]).items()})
            scenes = [val.scenes[i] for i in shapes_idx]
            metrics.update(oracle_accuracy(enc["recon"][sel], scenes, cfg.world))
            metrics.update(cell_state_codes(enc["codes"][sel], scenes, cfg.world))
            # whether each attribute is additive over the level digits (what factorised code
            # embeddings compose): arm/tokenizer/geometry.py
            metrics.update(shapes_geometry(enc["codes"][sel], scenes, cfg.world, model._levels))
            metrics["oracle_accuracy_on_originals"] = oracle_accuracy(target[sel], scenes, cfg.world)["oracle_scene_accuracy"]
            metrics.update({f"shapes_{k}": v for k, v in code_stats(enc["codes"][sel], model.codebook_size).items()
                            if k in ("code_usage", "code_perplexity")})
            metrics.update(retrieval_r1(model, enc["emb"][sel], [val.texts[i] for i in shapes_idx]))
    if with_fashion:
        try:
            metrics.update(fashion_metrics(model, ecfg, cfg.seed))
        except Exception as e:  # Fashion-MNIST missing: the other metrics still stand
            from arm.data.sources import SourceError

            if not isinstance(e, (SourceError, FileNotFoundError)):
                raise
            log.warning("Fashion-MNIST metrics skipped: %s", e)
            metrics["fashion_skipped"] = str(e)
    return metrics
