"""The bundled demo model (`torch:demo`): a small DiffusionGemma trained on the tasks in `tasks`."""

from pathlib import Path

DEMO_DIR = Path(__file__).parent
"""The demo checkpoint's folder (config, weights, tokenizer, chat template)."""
