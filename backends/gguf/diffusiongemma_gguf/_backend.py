"""The `gguf:` backend on llama.cpp: a GGUF run in this process, one request at a time (the PR keeps the phase and
the self-conditioning input on the model), in a worker thread, so the event loop stays free and a cancellation
lands between two denoising steps."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncGenerator

import anyio

from diffusiongemma_gguf._header import GGUFHeader
from diffusiongemma_gguf._llama import LlamaCppModel
from diffusiongemma_gguf._loop import CanvasDone, StepDone, StepSampler, generate_canvases
from diffusiongemma_gguf._options import GGUFOptions
from diffusiongemma_sdk import ConfigurationError, GenerationRequest, InvalidRequestError, StreamEvent
from diffusiongemma_sdk._local.backend import LocalBackend
from diffusiongemma_sdk._local.chat import ChatTemplate
from diffusiongemma_sdk._local.progress import RequestProgress
from diffusiongemma_sdk._local.request import PreparedRequest, local_capabilities, prepare_request
from diffusiongemma_sdk._local.settings import canvases_for

__all__ = ["LlamaCppBackend", "LlamaCppChat"]


class LlamaCppChat(ChatTemplate):
    """The file's chat template, with llama.cpp's tokenizer for the file."""

    def __init__(self, header: GGUFHeader, model: LlamaCppModel) -> None:
        super().__init__(header.chat_template, header.special_tokens)
        self._model = model

    def encode(self, text: str) -> list[int]:
        return self._model.tokenize(text)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        return self._model.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, text: str) -> int | None:
        return self._model.token_id(text)


class LlamaCppBackend(LocalBackend):
    """Runs a DiffusionGemma GGUF in llama.cpp (PR #24423) with the reference sampler on its logits."""

    def __init__(self, name: str, header: GGUFHeader, model: LlamaCppModel, options: GGUFOptions) -> None:
        self.name = name
        self.header = header
        self.model = model
        self.options = options
        self.chat = LlamaCppChat(header, model)
        self._capabilities = local_capabilities(self.chat, max_concurrency=1, context_window=model.context)
        self._torch_sampling = options.sampling == "torch"
        if self._torch_sampling:
            if importlib.util.find_spec("diffusiongemma_torch") is None:
                raise ConfigurationError(
                    "sampling='torch' is the torch engine's sampler: pip install diffusiongemma-torch"
                )
            from diffusiongemma_torch._checkpoint import start_intra_op_threads

            start_intra_op_threads()
        self._engine = anyio.Lock()  # the model's phase and self-conditioning input are global: one request at once
        self._worker = anyio.CapacityLimiter(1)

    async def aclose(self) -> None:
        async with self._engine:
            await anyio.to_thread.run_sync(self.model.close, limiter=self._worker)

    async def _events(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        prepared = await anyio.to_thread.run_sync(self._prepare, request, limiter=self._worker)
        progress = prepared.progress
        async with self._engine:
            reports = generate_canvases(
                self.model,
                prepared.prompt_ids,
                prepared.settings,
                self._sampler(prepared),
                max_canvases=canvases_for(progress.max_tokens, self.model.canvas_length),
                stop_token_ids=self.header.defaults.eos_token_ids,
            )
            try:
                while not progress.complete:
                    # a cancellation waits for the step in progress, then stops the work
                    report = await anyio.to_thread.run_sync(next, reports, None, limiter=self._worker)
                    if report is None:
                        break
                    for event in _events_of(report, progress):
                        yield event
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(reports.close, limiter=self._worker)
        for event in progress.final_events():
            yield event

    def _prepare(self, request: GenerationRequest) -> PreparedRequest:
        prepared = prepare_request(
            request,
            backend=self.name,
            chat=self.chat,
            defaults=self.header.defaults,
            canvas_length=self.model.canvas_length,
            context=self.model.context,
            default_max_tokens=self.options.default_max_tokens,
            every=self.options.stream_every,
        )
        if prepared.settings.reference and not self._torch_sampling:
            raise InvalidRequestError(
                "sampler='reference' draws transformers' random numbers, which takes the torch sampler: "
                "backend_options sampling='torch' (with diffusiongemma-torch), or leave the sampler at 'default'."
            )
        return prepared

    def _sampler(self, prepared: PreparedRequest) -> StepSampler:
        length, vocab = self.model.canvas_length, self.model.vocab_size
        if self._torch_sampling:
            from diffusiongemma_gguf._torch_sampler import TorchStepSampler

            return TorchStepSampler(prepared.settings, length=length, vocab=vocab, seed=prepared.seed)
        from diffusiongemma_gguf._numpy_sampler import NumpyStepSampler

        return NumpyStepSampler(prepared.settings, length=length, vocab=vocab, seed=prepared.seed)


def _events_of(report: StepDone | CanvasDone, progress: RequestProgress) -> list[StreamEvent]:
    if isinstance(report, StepDone):
        if not progress.wants_draft(report.step):
            return []
        return progress.draft(report.step, report.draft.tolist(), report.accepted_fraction, report.mean_entropy)
    return progress.commit(report.tokens, steps=report.steps, decoder_passes=report.decoder_passes)
