"""Machine-readable benchmark results: what `--json PATH` writes, and what the docs site plots (docs/_plots.py)."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_bars"]


def write_bars(
    path: Path | None, *, title: str, rows: list[dict[str, Any]], label: str, value: str, value_label: str
) -> None:
    """Write `rows` (one dict a row; `label` names each bar, `value` its length, `ratio` its annotation) to `path`,
    with the command that made them, the date and the machine. Nothing when `path` is None."""
    if path is None:
        return
    data = {
        "plot": "bars",
        "title": title,
        "command": " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "label_key": label,
        "value_key": value,
        "value_label": value_label,
        "rows": rows,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
