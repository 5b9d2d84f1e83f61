"""Self-consistency: n seeded samples of one prompt, generated together, and a majority vote over their answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel

from langchain_diffusiongemma._chat_model import ChatDiffusionGemma

__all__ = ["self_consistency"]


def final_text(message: AIMessage) -> Hashable:
    """The default extractor: the answer's text, without surrounding blanks."""
    return message.text.strip()


def self_consistency(
    model: ChatDiffusionGemma,
    n: int = 5,
    *,
    extract: Callable[[AIMessage], Hashable] = final_text,
    seed: int = 0,
) -> Runnable[LanguageModelInput, AIMessage]:
    """A runnable that samples `model` `n` times with seeds `seed`, `seed + 1`, ... and returns the sample whose
    `extract`ed answer most samples share (the earliest on a tie).

    The samples run at once, so a local engine with `backend_options={"max_batch": n}` (or more) denoises them as
    one batch. The vote is in `response_metadata["self_consistency"]`: `votes` (answer -> count, by first
    appearance), `winner`, `seeds`.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    seeds = [seed + index for index in range(n)]
    samples = RunnableParallel({str(s): model.bind(seed=s) for s in seeds}).with_config(max_concurrency=n)

    def vote(answers: dict[str, AIMessage]) -> AIMessage:
        messages = [answers[str(s)] for s in seeds]
        keys = [extract(message) for message in messages]
        votes = Counter(keys)
        winner = max(votes, key=lambda key: (votes[key], -keys.index(key)))
        chosen = messages[keys.index(winner)]
        tally: dict[str, Any] = {"votes": {str(key): votes[key] for key in dict.fromkeys(keys)}, "winner": winner}
        metadata = {**chosen.response_metadata, "self_consistency": {**tally, "seeds": seeds}}
        return chosen.model_copy(update={"response_metadata": metadata})

    return (samples | RunnableLambda(vote)).with_config(run_name="SelfConsistency")
