"""A checkpoint's chat template (the core's `ChatTemplate`) with its tokenizer: token ids to text and back."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tokenizers import Tokenizer

from diffusiongemma_sdk import ConfigurationError, InvalidRequestError
from diffusiongemma_sdk._local.chat import ChatTemplate, read_template

__all__ = ["ChatFormat"]


class ChatFormat(ChatTemplate):
    """A chat template plus its tokenizer (a `tokenizers.Tokenizer`)."""

    def __init__(self, template: str, special_tokens: Mapping[str, str], tokenizer: Tokenizer) -> None:
        super().__init__(template, special_tokens)
        self.tokenizer = tokenizer

    @classmethod
    def from_directory(cls, directory: Path) -> ChatFormat:
        """A checkpoint folder's: `tokenizer.json` and its chat template."""
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.exists():
            raise ConfigurationError(
                f"{directory} has no tokenizer.json; the torch backend needs the checkpoint's tokenizer."
            )
        template, special = read_template(directory)
        return cls(template, special, Tokenizer.from_file(str(tokenizer_file)))

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (the template writes the special tokens itself)."""
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        except TypeError:  # tokenizers takes only text that UTF-8 can encode
            raise InvalidRequestError(
                "The prompt is not valid Unicode text: it has an unpaired surrogate (a lone \\ud800-\\udfff)."
            ) from None

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_id(self, text: str) -> int | None:
        found = self.tokenizer.token_to_id(text)
        return None if found is None else int(found)
