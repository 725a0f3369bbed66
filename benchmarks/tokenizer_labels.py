"""How much the tokenizer's Fashion-MNIST zero-shot accuracy is limited by its captioned images.

    .venv/bin/python benchmarks/tokenizer_labels.py                      # models/tokenizer, tiny store
    .venv/bin/python benchmarks/tokenizer_labels.py --model DIR --labels 1000 2000 5000 20000

Zero-shot classification learns its classes from the captions of the clothing images the
tokenizer trained on (one class caption each). Baseline, in the same run: a supervised
logistic-regression probe on the codes alone (one-hot per position), trained on n labelled
Fashion-MNIST train images, for several n. The probe at n = the number of captioned clothing
images in the curated train split is what a perfect alignment head could reach with that data;
the probe at larger n shows what more data would buy. Reports zero-shot / probe(n) ratios.
Writes benchmarks/results/tokenizer_labels.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def captioned_clothing_images(cfg) -> int | None:
    """Labelled (Fashion-MNIST) images in the curated train split, or None without a store."""
    from arm.tokenizer.data import store_sets

    try:
        train = store_sets(cfg.data.store, cfg.tokenizer.image_size, ("train",))["train"]
    except FileNotFoundError:
        return None
    return sum(label is not None for label in train.labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "tokenizer")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--labels", type=int, nargs="+", default=[1000, 2000, 5000, 20000],
                    help="labelled train images for the code probe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tokenizer_labels.json")
    args = ap.parse_args()

    import torch

    from arm.config import load_config
    from arm.io import atomic_write_json
    from arm.tokenizer.metrics import embed_fashion, fashion_probes, fashion_zeroshot
    from arm.tokenizer.model import VisualTokenizer

    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "params.yaml", preset=args.preset)
    ecfg = cfg.tokenizer.eval
    tok = VisualTokenizer.from_pretrained(args.model)
    trained_on = captioned_clothing_images(cfg)
    counts = sorted(set(args.labels + ([trained_on] if trained_on else [])))
    # Each probe trains on the first n train images: encode the largest prefix once and cut it.
    test = embed_fashion(tok, ecfg, "t10k", ecfg.zeroshot_limit)
    train = embed_fashion(tok, ecfg, "train", counts[-1])
    zeroshot = fashion_zeroshot(tok, test, ecfg.prompts)["fashion_zeroshot_accuracy"]
    probes = {}
    for n in counts:
        m = fashion_probes(train.head(n), test, tok.codebook_size, cfg.seed)
        probes[n] = {"code_probe": round(m["fashion_code_probe_accuracy"], 4),
                     "feature_probe": round(m["fashion_linear_probe_accuracy"], 4)}
        print(f"n={n:6d}: code probe {probes[n]['code_probe']:.4f}, feature probe {probes[n]['feature_probe']:.4f}",
              flush=True)
    result = {
        "tokenizer": str(args.model),
        "zeroshot_accuracy": round(zeroshot, 4),
        "captioned_clothing_images_in_train": trained_on,
        "probes_by_labelled_images": probes,
        "zeroshot_over_code_probe": {n: round(zeroshot / p["code_probe"], 3) for n, p in probes.items()},
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
