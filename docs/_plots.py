"""The site's plots, drawn from the machine-readable output of the evals and benchmarks in docs/data/.

    .venv/bin/python docs/_plots.py        # what the site build does first (docs/_hooks.py)

Each data file is what a script wrote with `--json` (its command is inside); a plot is never typed in. The images go
to docs/plots/, which git ignores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend that needs no display

DOCS = Path(__file__).resolve().parent
DATA = DOCS / "data"
PLOTS = DOCS / "plots"


def demo_tasks_steps(data: dict[str, Any]) -> plt.Figure:
    """Exact match per demo task against the cap on denoising steps per canvas."""
    rows = [row for row in data["rows"] if row["max_denoising_steps"] is not None]
    figure, (accuracy, steps) = plt.subplots(1, 2, figsize=(10, 3.6))
    for task in dict.fromkeys(row["task"] for row in rows):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["max_denoising_steps"])
        caps = [r["max_denoising_steps"] for r in mine]
        accuracy.plot(caps, [100 * r["exact_match"] for r in mine], marker="o", label=task)
        steps.plot(caps, [r["steps_per_canvas"] for r in mine], marker="o", label=task)
    for axis, title in ((accuracy, "exact match (%)"), (steps, "steps taken per canvas")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("max_denoising_steps")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    accuracy.legend(fontsize=8)
    figure.suptitle(data["command"], fontsize=8)
    figure.tight_layout()
    return figure


def bars(data: dict[str, Any]) -> plt.Figure:
    """A benchmark's rows as bars of its main measure, one bar per row, labelled with the ratio where there is one."""
    label, value = data["label_key"], data["value_key"]
    rows = data["rows"]
    figure, axis = plt.subplots(figsize=(8, 0.5 + 0.45 * len(rows)))
    names = [str(row[label]) for row in rows]
    values = [float(row[value]) for row in rows]
    axis.barh(names, values, color="#3f51b5")
    axis.invert_yaxis()
    for index, row in enumerate(rows):
        if row.get("ratio") is not None:
            axis.text(values[index], index, f"  {row['ratio']:.2f}x", va="center", fontsize=8)
    axis.set_xlabel(data.get("value_label", value))
    axis.set_title(data["title"], fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    figure.text(0.01, 0.005, data["command"], fontsize=7)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


DRAWERS: dict[str, Callable[[dict[str, Any]], plt.Figure]] = {"demo_tasks": demo_tasks_steps, "bars": bars}


def render() -> list[Path]:
    """Draw a plot for every data file; return the images written."""
    PLOTS.mkdir(exist_ok=True)
    written = []
    for source in sorted(DATA.glob("*.json")):
        data = json.loads(source.read_text())
        kind = data.get("plot", data.get("eval"))
        if kind not in DRAWERS:
            raise SystemExit(f"{source} names no plot this script draws ({kind!r}); known: {', '.join(DRAWERS)}")
        figure = DRAWERS[kind](data)
        target = PLOTS / f"{source.stem}{'_steps' if kind == 'demo_tasks' else ''}.png"
        figure.savefig(target, dpi=110)
        plt.close(figure)
        written.append(target)
    return written


if __name__ == "__main__":
    for path in render():
        print(path.relative_to(DOCS.parent))
