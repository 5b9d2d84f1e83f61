"""Gemma 4 output markup: thought channel, tool calls and end-of-turn markers, parsed whole or incrementally.

The model writes `<|channel>thought\\n...<channel|>` for reasoning (sometimes unclosed, sometimes empty; some
stacks use `<think>...</think>`), `<|tool_call>call:NAME{key:<|"|>text<|"|>,n:2}<tool_call|>` for tool calls, and ends
its turn with `<turn|>`, `<eos>` or `<|tool_response>`. Every backend that sees raw model text uses this module.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from diffusiongemma_sdk._types import ToolCall

__all__ = [
    "TOOL_CALL_OPEN",
    "Gemma4StreamParser",
    "ParsedOutput",
    "Segment",
    "parse_gemma4",
    "parse_gemma_value",
    "parse_tool_call_body",
]

STRING_DELIMITER = '<|"|>'
_CHANNEL_OPEN, _CHANNEL_CLOSE = "<|channel>", "<channel|>"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_TOOL_OPEN, _TOOL_CLOSE = "<|tool_call>", "<tool_call|>"
TOOL_CALL_OPEN = _TOOL_OPEN
"""The token that opens a tool call; a local engine bans it for tool_choice='none'."""
_END_MARKERS = ("<turn|>", "<eos>", "<|tool_response>")
_TEXT_MARKERS = (_CHANNEL_OPEN, _THINK_OPEN, _TOOL_OPEN, *_END_MARKERS)
_CHANNEL_NAME = "thought"
_MAX_CHANNEL_HEADER = 32
_CALL_HEAD = re.compile(r"\s*call:\s*([\w.\-]+)\s*")


@dataclass(frozen=True)
class Segment:
    """A piece of parsed output: answer text, reasoning text, or a complete tool call."""

    kind: Literal["text", "reasoning", "tool_call"]
    text: str = ""
    tool_call: ToolCall | None = None


@dataclass
class ParsedOutput:
    """Model output split into answer text, reasoning and tool calls."""

    text: str = ""
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)


class Gemma4StreamParser:
    """Split model text into segments as it arrives, holding back only what may be the start of a marker."""

    def __init__(self) -> None:
        self._buffer = ""
        self._state: Literal["text", "channel_header", "reasoning", "tool_call", "ended"] = "text"
        self._reasoning_close = _CHANNEL_CLOSE
        self._at_start = True  # strip whitespace at the start of each text or reasoning run

    @property
    def ended(self) -> bool:
        """True once an end-of-turn marker was seen; later text is ignored."""
        return self._state == "ended"

    def feed(self, chunk: str) -> list[Segment]:
        """Parse the next piece of text and return the segments it completes."""
        self._buffer += chunk
        return self._drain(final=False)

    def close(self) -> list[Segment]:
        """Flush what is held back at the end of the output (unclosed blocks included)."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while self._buffer and self._state != "ended":
            if not self._step(out, final=final):
                break
        if self._state == "ended":
            self._buffer = ""
        return out

    def _step(self, out: list[Segment], *, final: bool) -> bool:
        """Advance the state machine once; False when more input is needed."""
        if self._state == "text":
            return self._scan(out, "text", _TEXT_MARKERS, final=final)
        if self._state == "reasoning":
            return self._scan(out, "reasoning", (self._reasoning_close, *_END_MARKERS), final=final)
        if self._state == "channel_header":
            return self._skip_channel_header(final=final)
        return self._read_tool_call(out, final=final)

    def _scan(
        self, out: list[Segment], kind: Literal["text", "reasoning"], markers: tuple[str, ...], *, final: bool
    ) -> bool:
        index, marker = _find_first(self._buffer, markers)
        if marker is None:
            keep = 0 if final else _partial_marker_length(self._buffer, markers)
            self._emit(out, kind, self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep :]
            return False
        self._emit(out, kind, self._buffer[:index])
        self._buffer = self._buffer[index + len(marker) :]
        self._at_start = True
        if marker in _END_MARKERS:
            self._state = "ended"
        elif marker == _CHANNEL_OPEN:
            self._state, self._reasoning_close = "channel_header", _CHANNEL_CLOSE
        elif marker == _THINK_OPEN:
            self._state, self._reasoning_close = "reasoning", _THINK_CLOSE
        elif marker == _TOOL_OPEN:
            self._state = "tool_call"
        else:  # a reasoning block closed
            self._state = "text"
        return True

    def _skip_channel_header(self, *, final: bool) -> bool:
        """Drop the channel name line (`thought\\n`) that follows `<|channel>`."""
        newline = self._buffer.find("\n")
        close = self._buffer.find(_CHANNEL_CLOSE)
        if newline == -1 and close == -1 and not final and len(self._buffer) < _MAX_CHANNEL_HEADER:
            return False
        if newline != -1 and (close == -1 or newline < close) and newline < _MAX_CHANNEL_HEADER:
            self._buffer = self._buffer[newline + 1 :]
        elif self._buffer.startswith(_CHANNEL_NAME):
            self._buffer = self._buffer[len(_CHANNEL_NAME) :]
        self._state = "reasoning"
        return True

    def _read_tool_call(self, out: list[Segment], *, final: bool) -> bool:
        index = self._buffer.find(_TOOL_CLOSE)
        if index == -1 and not final:
            return False
        body = self._buffer if index == -1 else self._buffer[:index]
        self._buffer = "" if index == -1 else self._buffer[index + len(_TOOL_CLOSE) :]
        self._state, self._at_start = "text", True
        call = parse_tool_call_body(body)
        if call is None:  # keep what the model wrote rather than lose it
            out.append(Segment("text", _TOOL_OPEN + body + ("" if index == -1 else _TOOL_CLOSE)))
        else:
            out.append(Segment("tool_call", tool_call=call))
        return True

    def _emit(self, out: list[Segment], kind: Literal["text", "reasoning"], text: str) -> None:
        if self._at_start:
            text = text.lstrip()
        if text:
            self._at_start = False
            out.append(Segment(kind, text))


def parse_gemma4(text: str) -> ParsedOutput:
    """Parse a complete model output into answer text, reasoning and tool calls."""
    parser = Gemma4StreamParser()
    segments = parser.feed(text) + parser.close()
    reasoning_parts = [s.text for s in segments if s.kind == "reasoning"]
    has_reasoning_block = any(marker in text for marker in (_CHANNEL_OPEN, _THINK_OPEN))
    return ParsedOutput(
        text="".join(s.text for s in segments if s.kind == "text").rstrip(),
        reasoning="".join(reasoning_parts).rstrip() if has_reasoning_block else None,
        tool_calls=[s.tool_call for s in segments if s.tool_call is not None],
    )


def parse_tool_call_body(body: str) -> ToolCall | None:
    """Parse `call:NAME{...}` (the text between the tool-call markers); None when it names no tool. Arguments that
    do not parse are kept in `raw_arguments`."""
    head = _CALL_HEAD.match(body)
    if head is None:
        return None
    rest = body[head.end() :].strip()
    if not rest:
        return ToolCall(name=head.group(1))
    try:
        arguments = parse_gemma_value(rest)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):  # a call all the same: its arguments are kept as the model wrote them
        return ToolCall(name=head.group(1), raw_arguments=rest)
    return ToolCall(name=head.group(1), arguments=arguments)


def parse_gemma_value(text: str) -> Any:
    """Parse Gemma's object notation: bare keys, `<|"|>` strings, JSON literals, nested `{}` and `[]`."""
    reader = _ValueReader(text)
    value = reader.value()
    reader.skip_space()
    if reader.position != len(text):
        raise ValueError(f"unexpected text after the value at offset {reader.position}")
    return value


class _ValueReader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def skip_space(self) -> None:
        while self.position < len(self.text) and self.text[self.position].isspace():
            self.position += 1

    def value(self) -> Any:
        self.skip_space()
        if self.text.startswith(STRING_DELIMITER, self.position):
            return self._delimited_string()
        char = self.text[self.position : self.position + 1]
        if char == "{":
            return self._object()
        if char == "[":
            return self._array()
        if char == '"':
            return self._json_string()
        return self._bare()

    def _expect(self, char: str) -> None:
        self.skip_space()
        if self.text[self.position : self.position + 1] != char:
            raise ValueError(f"expected {char!r} at offset {self.position}")
        self.position += 1

    def _delimited_string(self) -> str:
        start = self.position + len(STRING_DELIMITER)
        end = self.text.find(STRING_DELIMITER, start)
        if end == -1:
            raise ValueError('unterminated <|"|> string')
        self.position = end + len(STRING_DELIMITER)
        return self.text[start:end]

    def _json_string(self) -> str:
        value, self.position = json.JSONDecoder().raw_decode(self.text, self.position)
        return str(value)

    def _bare(self) -> Any:
        start = self.position
        while self.position < len(self.text) and self.text[self.position] not in ",}]:":
            self.position += 1
        token = self.text[start : self.position].strip()
        if not token:
            raise ValueError(f"expected a value at offset {start}")
        try:
            return json.loads(token)
        except json.JSONDecodeError:
            return token

    def _key(self) -> str:
        self.skip_space()
        if self.text.startswith(STRING_DELIMITER, self.position):
            return self._delimited_string()
        if self.text[self.position : self.position + 1] == '"':
            return self._json_string()
        start = self.position
        while self.position < len(self.text) and self.text[self.position] not in ":,{}[]":
            self.position += 1
        key = self.text[start : self.position].strip()
        if not key:
            raise ValueError(f"expected a key at offset {start}")
        return key

    def _object(self) -> dict[str, Any]:
        result: dict[str, Any] = {}

        def member() -> None:
            key = self._key()
            self._expect(":")
            result[key] = self.value()

        self._items("{", "}", member)
        return result

    def _array(self) -> list[Any]:
        result: list[Any] = []
        self._items("[", "]", lambda: result.append(self.value()))
        return result

    def _items(self, opening: str, closing: str, read_item: Callable[[], None]) -> None:
        """Read `opening item, item, ... closing`, allowing an empty list of items."""
        self._expect(opening)
        self.skip_space()
        if self.text[self.position : self.position + 1] == closing:
            self.position += 1
            return
        while True:
            read_item()
            self.skip_space()
            if self.text[self.position : self.position + 1] != ",":
                self._expect(closing)
                return
            self.position += 1


def _find_first(text: str, markers: tuple[str, ...]) -> tuple[int, str | None]:
    best_index, best_marker = -1, None
    for marker in markers:
        index = text.find(marker)
        if index != -1 and (best_index == -1 or index < best_index):
            best_index, best_marker = index, marker
    return best_index, best_marker


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest
