"""The scripts in examples/ run as a user runs them (a fresh process, default arguments: the bundled demo model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# what each example prints when it did its job, beyond exiting with 0
EXPECTED = {
    "gguf_quantized.py": ["wrote demo-q8_0.gguf", "torch engine -> blue green red"],
    "langchain_agent.py": ["tool add -> 42", "model: 42", "draft, canvas 0 step 1"],
    "quickstart.py": ["answer: ", "committed: 'blue green red'", "reasoning: I will reverse the words."],
    "serve_and_switch.py": ["torch:demo            -> blue green red", "/v1 -> blue green red", "openai-python"],
    "testing_your_app.py": ["answer: The sum is 42.", "one retried after a 429"],
    "tool_round_trip.py": ["call: add({'a': 12, 'b': 30})", "answer: 42"],
}


def test_every_example_is_checked() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=170, check=False
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, done.stdout
