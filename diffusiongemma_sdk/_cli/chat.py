"""`diffusiongemma chat`: a conversation at the prompt, with the backend loaded once and the canvases drawn live."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import Future, InvalidStateError
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from diffusiongemma_sdk._cli.failures import print_failure, reporting_failures
from diffusiongemma_sdk._cli.interrupts import run_interruptible
from diffusiongemma_sdk._cli.live import live_view, run_generation
from diffusiongemma_sdk._cli.options import (
    REQUEST_PANEL,
    BackendChoice,
    BackendOption,
    BackendOptionsOption,
    DebugOption,
    MaxTokensOption,
    NoLiveOption,
    SeedOption,
    StepsOption,
    SystemOption,
    backend_choice,
    request_options,
)
from diffusiongemma_sdk._cli.report import print_generation
from diffusiongemma_sdk._client import AsyncDiffusionGemma
from diffusiongemma_sdk._errors import APIError
from diffusiongemma_sdk._types import Message

__all__ = ["chat"]

_COMMANDS = {
    "/reset": "forget the conversation (a --system message stays)",
    "/thinking": "turn thinking on or off",
    "/help": "show these commands",
    "/exit": "leave (Ctrl-D too)",
}


def chat(
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
    max_tokens: MaxTokensOption = None,
    thinking: Annotated[
        bool, typer.Option(help="Start with thinking on (/thinking toggles it).", rich_help_panel=REQUEST_PANEL)
    ] = False,
    steps: StepsOption = None,
    seed: SeedOption = None,
    system: SystemOption = None,
    no_live: NoLiveOption = False,
    debug: DebugOption = False,
) -> None:
    """Talk with the model: each line is a user turn, sent with the conversation so far.

    Commands: /reset forgets the conversation, /thinking turns thinking on or off,
    /help lists them, /exit or Ctrl-D leaves; Ctrl-C leaves at once (exit 130).
    On an interactive terminal the canvases are drawn live, as in generate.
    stdout: the answers. stderr: the prompt, reasoning, a stats line per answer
    and notes. A request that fails on the server or the connection is reported
    and the chat goes on; any other error ends it.
    """
    with reporting_failures(debug):
        choice = backend_choice(backend, backend_option)
        session = _Chat(
            request=request_options(max_tokens=max_tokens, steps=steps, seed=seed, thinking=thinking),
            system=[] if system is None else [Message(role="system", content=system)],
            live=not no_live,
            debug=debug,
        )
        run_interruptible(partial(session.run, choice))


@dataclass
class _Chat:
    """One conversation: its history, the request options of every turn, and where things are printed."""

    request: dict[str, Any]
    system: list[Message]
    live: bool
    debug: bool
    history: list[Message] = field(default_factory=list)
    out: Console = field(default_factory=Console)
    err: Console = field(default_factory=lambda: Console(stderr=True))

    async def run(self, choice: BackendChoice) -> None:
        """Load the backend, then answer lines until /exit or the end of stdin."""
        stdin = _Stdin()
        async with choice.client() as client:
            self._note(f"Chatting with {client.backend.name}. /help lists the commands; /exit or Ctrl-D leaves.")
            while (line := await self._ask(stdin)) is not None:
                text = line.strip()
                if text.startswith("/"):
                    if text == "/exit":
                        return
                    self._command(text)
                elif text:
                    await self._turn(client, text)

    async def _turn(self, client: AsyncDiffusionGemma, text: str) -> None:
        """Answer one user turn; the exchange joins the history only when the answer came."""
        question = Message(role="user", content=text)
        try:
            with live_view(self.out, self.live) as live:
                generation, elapsed = await run_generation(
                    client, [*self.system, *self.history, question], self.request, live
                )
        except APIError as error:
            print_failure(error, self.debug)
            return
        print_generation(generation, elapsed, self.err)
        self.history += [question, Message(role="assistant", content=generation.text)]

    async def _ask(self, stdin: _Stdin) -> str | None:
        """The user's next line (None at the end of stdin), after a prompt on stderr when stdin is a terminal."""
        if stdin.terminal:
            self.err.print("[bold green]>[/] ", end="")
        line = await stdin.read_line()
        if line is None and stdin.terminal:
            self.err.print()  # end the prompt's line
        return line

    def _command(self, command: str) -> None:
        if command == "/reset":
            self.history.clear()
            self._note("The conversation is forgotten.")
        elif command == "/thinking":
            self.request["thinking"] = not self.request["thinking"]
            self._note(f"Thinking is {'on' if self.request['thinking'] else 'off'}.")
        elif command == "/help":
            self._note("\n".join(f"{name:<10} {meaning}" for name, meaning in _COMMANDS.items()))
        else:
            self._note(f"Unknown command {command}; /help lists the commands.")

    def _note(self, text: str) -> None:
        self.err.print(Text(text, style="dim"), soft_wrap=True)


class _Stdin:
    """Lines of stdin, each read in a daemon thread of its own, so that Ctrl-C at the prompt ends the program at once.

    Reads go straight to the file descriptor: a thread blocked inside `sys.stdin` would hold its lock, and the
    interpreter aborts when it finds that lock held at shutdown. Without a descriptor (stdin replaced, as in tests),
    `sys.stdin.readline()` reads.
    """

    def __init__(self) -> None:
        self.terminal = sys.stdin.isatty()
        self._pending = b""
        try:
            self._fd: int | None = sys.stdin.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    async def read_line(self) -> str | None:
        """The next line without its end, or None at the end of stdin."""
        line: Future[str | None] = Future()

        def read() -> None:
            with suppress(InvalidStateError):  # the wait was cancelled
                try:
                    line.set_result(self._read())
                except BaseException as error:
                    line.set_exception(error)

        threading.Thread(target=read, name="chat input", daemon=True).start()
        return await asyncio.wrap_future(line)

    def _read(self) -> str | None:
        if self._fd is None:
            text = sys.stdin.readline()
            return text.removesuffix("\n") if text else None
        while b"\n" not in self._pending and (chunk := os.read(self._fd, 4096)):
            self._pending += chunk
        if not self._pending:
            return None
        data, _, self._pending = self._pending.partition(b"\n")
        return data.decode(sys.stdin.encoding or "utf-8", errors="replace")
