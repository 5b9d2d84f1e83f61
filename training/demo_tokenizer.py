"""The demo model's tokenizer: byte-level BPE (no unknown tokens, ever) learnt from the demo tasks' own text.

Every number from 0 to 198 and every word of the task word list is one token, with and without a leading space, so
that an answer is one token per item. The Gemma 4 special tokens come first, at the ids the real checkpoint's
tokenizer gives the first four of them (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from diffusiongemma_torch.demo.tasks import WORDS

SPECIAL_TOKENS = [
    "<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>",
    "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<|tool>", "<tool|>", '<|"|>',
]  # fmt: skip
VOCAB_SIZE = 1024
SINGLE_TOKENS = [str(n) for n in range(199)] + list(WORDS)
"""Items that must each be one token, bare and after a space."""


def build_tokenizer(corpus: Iterable[str], directory: Path) -> Tokenizer:
    """Learn the BPE merges from `corpus`, check the single-token items and save the tokenizer files."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    items = [" ".join(SINGLE_TOKENS), "\n".join(SINGLE_TOKENS)] * 50
    tokenizer.train_from_iterator([*corpus, *items], trainer)
    for item in SINGLE_TOKENS:
        for text in (item, " " + item):
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            if len(ids) != 1:
                raise RuntimeError(f"{text!r} is {len(ids)} tokens; raise VOCAB_SIZE or the corpus weight.")
    tokenizer.save(str(directory / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 8192,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return tokenizer
