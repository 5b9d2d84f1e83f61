"""mkdocs hooks: the plots are drawn from docs/data/ before every build (docs/_plots.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def on_pre_build(config: Any) -> None:
    spec = importlib.util.spec_from_file_location("_plots", Path(config["docs_dir"]) / "_plots.py")
    assert spec is not None
    assert spec.loader is not None
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    plots.render()
