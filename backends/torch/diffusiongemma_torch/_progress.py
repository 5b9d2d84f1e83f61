"""A request's row of each engine report, handed to its `RequestProgress` (the core's, shared by the local engines)
as plain numbers: drafts decoded only when its reader asked for them."""

from __future__ import annotations

from diffusiongemma_sdk import StreamEvent
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep

__all__ = ["row_events"]


def row_events(progress: RequestProgress, report: DenoiseStep | CanvasCommitted, row: int) -> list[StreamEvent]:
    """The events row `row` of an engine report makes for its request."""
    if isinstance(report, DenoiseStep):
        if not progress.wants_draft(report.step) or not report.denoised[row]:
            return []
        return progress.draft(
            report.step,
            report.draft[row].tolist(),
            float(report.accepted_fraction[row]),
            float(report.mean_entropy[row]),
        )
    return progress.commit(
        report.tokens[row].tolist(), steps=int(report.steps[row]), decoder_passes=int(report.decoder_passes[row])
    )
