"""A tokenizer both ways: a checkpoint's `tokenizer.json` written as GGUF tokenizer metadata (llama.cpp's `gpt2`
byte-level BPE, or `gemma4` SentencePiece-style BPE with byte fallback), and that metadata read back as a
`tokenizers.Tokenizer` for the torch engine (the reconstruction transformers' GGUF loader makes for these types)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gguf import TokenType

from diffusiongemma_sdk import ConfigurationError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["GGUFVocab", "tokenizer_from_vocab", "vocab_from_tokenizer_json"]

_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_SPACE_MARK = "\u2581"
_KINDS = {"gpt2": "gpt-2", "gemma4": "gemma4"}  # tokenizer.ggml.model -> tokenizer.ggml.pre


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer as GGUF stores it: `tokenizer.ggml.model`, `.pre`, `.tokens`, `.token_type`, `.merges`."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]

    def token_id(self, text: str) -> int | None:
        try:
            return self.tokens.index(text)
        except ValueError:
            return None


def vocab_from_tokenizer_json(data: dict[str, Any], vocab_size: int) -> GGUFVocab:
    """GGUF tokenizer metadata for a `tokenizer.json` (a BPE model), padded with unused tokens to `vocab_size`."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigurationError(
            f"The converter writes BPE tokenizers only (llama.cpp's gpt2 and gemma4 types); this checkpoint's "
            f"tokenizer is {model.get('type')!r}."
        )
    if _has(data.get("pre_tokenizer"), "ByteLevel"):
        kind = "gpt2"
    elif model.get("byte_fallback") and _has(data.get("normalizer"), "Replace", content=_SPACE_MARK):
        kind = "gemma4"
    else:
        raise ConfigurationError(
            "The converter writes byte-level BPE (gpt2) and SentencePiece-style BPE with byte fallback (gemma4) "
            "tokenizers; this checkpoint's BPE tokenizer is neither (no ByteLevel pre-tokenizer, no '▁' normalizer)."
        )
    added = {int(token["id"]): token for token in data.get("added_tokens", [])}
    texts = {int(index): str(text) for text, index in model["vocab"].items()}
    texts.update({index: str(token["content"]) for index, token in added.items()})
    if max(texts) >= vocab_size:
        raise ConfigurationError(f"The tokenizer has ids up to {max(texts)}, beyond the model's vocab of {vocab_size}.")
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in texts:
            token_type = TokenType.UNUSED
        elif kind == "gemma4" and _BYTE_TOKEN.fullmatch(texts[index]):
            token_type = TokenType.BYTE  # byte fallback needs them typed so, even if listed as added tokens
        elif index in added:
            token_type = TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED
        else:
            token_type = TokenType.NORMAL
        tokens.append(texts.get(index, f"[PAD{index}]"))
        types.append(int(token_type))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return GGUFVocab(model=kind, pre=_KINDS[kind], tokens=tokens, token_types=types, merges=merges)


def tokenizer_from_vocab(vocab: GGUFVocab, *, unk_token_id: int | None = None) -> Tokenizer:
    """A `tokenizers.Tokenizer` that tokenizes and decodes as the GGUF's tokenizer does."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    if vocab.model not in _KINDS:
        raise ConfigurationError(
            f"The torch engine reads GGUF tokenizers of type gpt2 and gemma4; this file's is {vocab.model!r}."
        )
    ids = {token: index for index, token in enumerate(vocab.tokens)}
    merges = [_split_merge(merge) for merge in vocab.merges]
    tokenizer: Tokenizer
    if vocab.model == "gpt2":
        tokenizer = Tokenizer(BPE(vocab=ids, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
    else:
        unk = vocab.tokens[unk_token_id] if unk_token_id is not None else None
        tokenizer = Tokenizer(BPE(vocab=ids, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
        tokenizer.normalizer = normalizers.Replace(" ", _SPACE_MARK)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
        tokenizer.decoder = decoders.Sequence(
            [decoders.Replace(_SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
        )
    kinds = zip(vocab.tokens, vocab.token_types, strict=True)
    added = [
        AddedToken(token, special=kind == TokenType.CONTROL, normalized=False)
        for token, kind in kinds
        if kind in (TokenType.CONTROL, TokenType.USER_DEFINED)
    ]
    tokenizer.add_special_tokens([token for token in added if token.special])
    tokenizer.add_tokens([token for token in added if not token.special])
    return tokenizer


def _split_merge(merge: str) -> tuple[str, str]:
    """A merge "a b" as llama.cpp reads it: split at the first space after the first character."""
    cut = merge.find(" ", 1)
    return merge[:cut], merge[cut + 1 :]


def _has(component: Any, kind: str, **fields: str) -> bool:
    """Whether a tokenizer.json component (or a Sequence of them) is, or holds, one of type `kind` with `fields`."""
    if not isinstance(component, dict):
        return False
    if component.get("type") == "Sequence":
        parts = component.get("pretokenizers") or component.get("normalizers") or []
        return any(_has(part, kind, **fields) for part in parts)
    return component.get("type") == kind and all(component.get(k) == v for k, v in fields.items())
