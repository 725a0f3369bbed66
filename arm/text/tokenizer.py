"""The text tokenizer of the unified vocabulary, as a transformers fast tokenizer.

Ids follow `VocabLayout`: the text tokenizer's own ids [0, n_text), then the special tokens in
`SPECIAL_TOKENS` order (then one `<grid_HxW>` per grid when there are several), then one added
token `<img_{c}>` per image code. Saved into the model
dir, so `PreTrainedTokenizerFast.from_pretrained(model_dir)` returns ids that agree with
`vocab_layout.json` (AutoTokenizer would pick the class of config.json's model_type instead).

Text comes from a byte-level BPE trained on the curated train text (`text.tokenizer: bpe`) or
from a hub tokenizer by name (e.g. Qwen/Qwen2.5-7B), read from the local cache only.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from arm.model.config import TextConfig
from arm.text.vocab import VocabLayout

EXTRA_SPECIALS = ("<boi>", "<eoi>", "<uncond>")  # the specials transformers has no named slot for


def image_token(code: int) -> str:
    return f"<img_{code}>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE over `texts`; it may end below `vocab_size` when the corpus runs out of merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def hub_text_tokenizer(name: str) -> Tokenizer:
    """The backend tokenizer of a hub tokenizer, from the local cache (no download)."""
    try:
        hub = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(
            f"text.tokenizer {name!r} is not in the local Hugging Face cache (offline); "
            f"download it first or use text.tokenizer=bpe: {e}"
        ) from None
    return Tokenizer.from_str(hub.backend_tokenizer.to_str())


def wrap(text_tok: Tokenizer, codebook_size: int, grid: tuple[int, int], levels: tuple[int, ...],
         grids: tuple[tuple[int, int], ...] = ()) -> tuple[PreTrainedTokenizerFast, VocabLayout]:
    """Append the specials and image tokens to a text tokenizer; returns the HF tokenizer and layout."""
    tok = Tokenizer.from_str(text_tok.to_str())  # leave the caller's tokenizer untouched
    n_text = tok.get_vocab_size(with_added_tokens=True)
    layout = VocabLayout(n_text=n_text, codebook_size=codebook_size, grid=tuple(grid), levels=tuple(levels),
                         grids=tuple(tuple(g) for g in grids))
    clash = [s for s in layout.specials if tok.token_to_id(s) is not None]
    if clash:
        # the layout puts every special after the text rows: a token the text vocabulary already
        # has would not be added again, and every id after it would shift by one
        raise ValueError(f"the text tokenizer already has the token(s) {clash} that ARM appends as specials")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in layout.specials])
    # special=True: decode(skip_special_tokens=True) drops image tokens from text output
    tok.add_tokens([AddedToken(image_token(c), special=True, normalized=False) for c in range(codebook_size)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        sep_token="<sep>",
        extra_special_tokens=list(EXTRA_SPECIALS),
    )
    check_layout(hf, layout)
    return hf, layout


def build_tokenizer(
    cfg: TextConfig,
    texts: Iterable[str] | None,
    codebook_size: int,
    grid: tuple[int, int],
    levels: tuple[int, ...],
    grids: tuple[tuple[int, int], ...] = (),
) -> tuple[PreTrainedTokenizerFast, VocabLayout]:
    if cfg.tokenizer == "bpe":
        if texts is None:
            raise ValueError("text.tokenizer=bpe needs the training text")
        base = train_bpe(texts, cfg.vocab_size, cfg.min_frequency)
    else:
        base = hub_text_tokenizer(cfg.tokenizer)
    return wrap(base, codebook_size, grid, levels, grids)


def check_layout(tok: PreTrainedTokenizerFast, layout: VocabLayout) -> None:
    """Raise if any special or image token id disagrees with the layout."""
    if len(tok) != layout.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, layout says {layout.vocab_size}")
    for name in layout.specials:
        got = tok.convert_tokens_to_ids(name)
        if got != layout.special(name):
            raise ValueError(f"special token {name} has id {got}, layout says {layout.special(name)}")
    for c in {0, layout.codebook_size - 1}:
        got = tok.convert_tokens_to_ids(image_token(c))
        if got != layout.image_offset + c:
            raise ValueError(f"{image_token(c)} has id {got}, layout says {layout.image_offset + c}")


def save_tokenizer(tok: PreTrainedTokenizerFast, layout: VocabLayout, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(directory))
    layout.save(directory)


def load_tokenizer(directory: str | Path) -> tuple[PreTrainedTokenizerFast, VocabLayout]:
    """Tokenizer and layout of a model dir, checked against each other."""
    layout = VocabLayout.load(directory)
    # the class we saved, not AutoTokenizer's pick from config.json's model_type: for a qwen2 model
    # dir that is Qwen2Tokenizer, which adds <|endoftext|> and shifts every id after the text rows
    tok = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    check_layout(tok, layout)
    return tok, layout


def encode_texts(tok: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    """Text ids without any added specials (the sequence formats add them)."""
    if not texts:
        return []
    return tok(texts, add_special_tokens=False)["input_ids"]
