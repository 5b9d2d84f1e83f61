"""Helpers for tests of the `diffusiongemma` program run in-process with typer's CliRunner."""

from __future__ import annotations

import re

from typer.testing import Result

TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # rich's switches: a terminal, drawn in place
STATS = re.compile(
    r"\d+ canvas(es)?, \d+ denoising steps? \([\d.]+ per canvas\), \d+ tokens?, [\d.]+ s, [\d.]+ tokens/s"
)


def failure_lines(result: Result) -> list[str]:
    """The stderr of a failed run, checked to be exactly one error line and one hint line."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["error:", "hint:"], result.stderr
    return lines
