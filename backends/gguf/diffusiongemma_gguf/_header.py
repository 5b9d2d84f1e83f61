"""A GGUF file's header, read with `gguf.GGUFReader` (no llama.cpp needed): the architecture, the canvas length,
the sampler defaults (`diffusion.eb_*`, else the runtime's), the chat template and the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from diffusiongemma_gguf import _layout as layout
from diffusiongemma_gguf._vocab import GGUFVocab
from diffusiongemma_sdk import ConfigurationError
from diffusiongemma_sdk._local.settings import GenerationDefaults

__all__ = ["GGUFHeader"]

_END_OF_GENERATION = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
_GEMMA4_ENDS = ("<turn|>", "<|tool_response>")  # llama.cpp also ends generation on these (llama-vocab.cpp)
_TEMPLATE_IDS = {"bos_token": "bos", "eos_token": "eos", "pad_token": "padding", "unk_token": "unknown"}


@dataclass(frozen=True)
class GGUFHeader:
    """What the SDK reads from a DiffusionGemma GGUF before anything runs it."""

    path: Path
    canvas_length: int
    context_length: int
    defaults: GenerationDefaults
    chat_template: str
    special_tokens: dict[str, str]
    vocab: GGUFVocab
    metadata: dict[str, Any] = field(repr=False)
    reader: GGUFReader = field(repr=False)

    @classmethod
    def read(cls, path: Path) -> GGUFHeader:
        """Read and check a file's header; `ConfigurationError` says what is wrong with it."""
        if not path.is_file():
            raise ConfigurationError(f"No GGUF file at {path}. Use gguf:<file.gguf> or gguf:demo.")
        try:
            reader = GGUFReader(path)
        except (ValueError, OSError, IndexError) as exc:
            raise ConfigurationError(f"{path} is not a readable GGUF file: {exc}") from None
        metadata = {name: _value(reader.fields[name]) for name in reader.fields if not name.startswith("GGUF.")}
        architecture = metadata.get("general.architecture")
        if architecture != layout.ARCH:
            raise ConfigurationError(
                f"{path.name} holds a {architecture!r} model, not DiffusionGemma ({layout.ARCH!r}). "
                "Convert a DiffusionGemma checkpoint with: diffusiongemma convert-gguf <checkpoint> <out.gguf>"
            )
        canvas = metadata.get(layout.CANVAS_LENGTH)
        if not isinstance(canvas, int) or canvas <= 0:
            raise ConfigurationError(f"{path.name} has no positive {layout.CANVAS_LENGTH}, which the runtime needs.")
        vocab = GGUFVocab(
            model=str(metadata.get("tokenizer.ggml.model", "")),
            pre=str(metadata.get("tokenizer.ggml.pre", "")),
            tokens=list(metadata.get("tokenizer.ggml.tokens", [])),
            token_types=list(metadata.get("tokenizer.ggml.token_type", [])),
            merges=list(metadata.get("tokenizer.ggml.merges", [])),
        )
        template = metadata.get("tokenizer.chat_template")
        if not isinstance(template, str):
            raise ConfigurationError(f"{path.name} has no tokenizer.chat_template to render prompts with.")
        return cls(
            path=path,
            canvas_length=canvas,
            context_length=int(metadata[f"{layout.ARCH}.context_length"]),
            defaults=_defaults(metadata, vocab),
            chat_template=template,
            special_tokens={
                name: vocab.tokens[index]
                for name, key in _TEMPLATE_IDS.items()
                if isinstance(index := metadata.get(f"tokenizer.ggml.{key}_token_id"), int)
                and 0 <= index < len(vocab.tokens)
            },
            vocab=vocab,
            metadata=metadata,
            reader=reader,
        )

    def arch(self, key: str, default: Any = None) -> Any:
        """An architecture-prefixed value (`"block_count"` -> `diffusion-gemma.block_count`)."""
        return self.metadata.get(f"{layout.ARCH}.{key}", default)


def _defaults(metadata: dict[str, Any], vocab: GGUFVocab) -> GenerationDefaults:
    """The `diffusion.eb_*` sampler defaults, the runtime's where the file has none (as the PR's runtime does)."""
    fallback = GenerationDefaults()
    values = {name: metadata.get(key, getattr(fallback, name)) for name, key in layout.EB_KEYS.items()}
    ends = [metadata[key] for key in _END_OF_GENERATION if isinstance(metadata.get(key), int)]
    ends += [index for text in _GEMMA4_ENDS if (index := vocab.token_id(text)) is not None]
    return GenerationDefaults(
        max_denoising_steps=int(values["max_denoising_steps"]),
        entropy_bound=float(values["entropy_bound"]),
        t_min=float(values["t_min"]),
        t_max=float(values["t_max"]),
        confidence_threshold=float(values["confidence_threshold"]),
        stability_threshold=int(values["stability_threshold"]),
        eos_token_ids=tuple(dict.fromkeys(ends)) or fallback.eos_token_ids,
        pad_token_id=int(metadata.get("tokenizer.ggml.padding_token_id", fallback.pad_token_id)),
    )


def _value(field: Any) -> Any:
    """A metadata value as Python: float32s as their shortest decimal (0.1 stays 0.1), arrays as lists."""
    kind = field.types[0] if field.types else None
    if kind == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return field.contents()
        return [_scalar(field.parts[index][0], field.types[-1]) for index in field.data]
    return _scalar(field.parts[field.data[0]][0], kind) if kind != GGUFValueType.STRING else field.contents()


def _scalar(value: Any, kind: GGUFValueType | None) -> Any:
    if kind == GGUFValueType.FLOAT32:
        return float(str(np.float32(value)))
    if kind == GGUFValueType.BOOL:
        return bool(value)
    return value.item() if hasattr(value, "item") else value
