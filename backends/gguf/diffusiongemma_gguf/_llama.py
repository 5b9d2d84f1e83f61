"""A DiffusionGemma GGUF in llama.cpp (PR #24423), in this process, through llama-cpp-python's bindings and the
PR's five functions bound with ctypes (shared/reference/gguf-llamacpp.md §4, §9).

The model has no KV cache; the PR keeps a prompt K/V store on the model instead. `prefill` writes tokens into it
causally, in chunks (the prompt, then each committed canvas: the encoder pass), `denoise` runs the canvas
bidirectionally against it, with self-conditioning from the previous step's logits. llama.cpp aborts the whole
process on some bad sizes (`GGML_ASSERT`), so every decode is checked here first and refused with a Python error.
The phase and the self-conditioning pointer are model-global: one request at a time per model.
"""

from __future__ import annotations

import ctypes
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from diffusiongemma_gguf._support import LlamaCppUnavailableError, library_of, llama_cpp_support
from diffusiongemma_sdk import ConfigurationError, InvalidRequestError

__all__ = ["LlamaCppModel", "available_memory"]

UNIFIED, PREFILL, DECODE = 0, 1, 2  # llama_diffusion_set_phase
_FLASH_ATTENTION_OFF = 0  # the prompt store is then F32: the same precision as the torch engine's cache


class LlamaCppModel:
    """One GGUF loaded in llama.cpp with one context; not thread-safe (callers serialise)."""

    def __init__(self, path: Path, *, canvas_length: int, context: int, threads: int, prefill_chunk: int) -> None:
        support = llama_cpp_support()
        if not support.ready:
            raise LlamaCppUnavailableError(support)
        bindings: Any = importlib.import_module("llama_cpp")  # by name: type checks do not follow into it
        self._api = bindings
        self._lib = _bind(library_of(bindings))
        _silence(bindings)
        bindings.llama_backend_init()
        model_params = bindings.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = bindings.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise ConfigurationError(
                f"llama.cpp could not load {path.name} (a DiffusionGemma GGUF it cannot read: written by another "
                "converter version, or truncated). Re-convert it: diffusiongemma convert-gguf <checkpoint> <out.gguf>"
            )
        if not bindings.llama_model_is_diffusion(self._model):  # the architecture as llama.cpp itself sees it
            bindings.llama_model_free(self._model)
            raise ConfigurationError(f"llama.cpp loaded {path.name}, but not as a diffusion model.")
        self.canvas_length = canvas_length
        self.batch_size = max(canvas_length, prefill_chunk)
        self.context = context
        self._store_capacity = 0  # prompt positions the model's K/V store holds (it only ever grows)
        self._request_capacity = 0  # the running request's context
        self._written = 0  # positions of the running request written into the store
        self._lib.llama_diffusion_set_phase(self._model, UNIFIED, 0, 0)
        # self-conditioning must be on before the context exists, so that its graph reserve includes it
        self._lib.llama_diffusion_set_sc(self._model, None, 0.0, 1.0, True)
        context_params = bindings.llama_context_default_params()
        context_params.n_ctx = context
        context_params.n_batch = context_params.n_ubatch = self.batch_size
        context_params.n_outputs_max = canvas_length  # logits for the canvas rows only, not [prompt x vocab]
        context_params.n_threads = context_params.n_threads_batch = threads
        context_params.flash_attn_type = _FLASH_ATTENTION_OFF
        context_params.no_perf = True
        self._context = bindings.llama_init_from_model(self._model, context_params)
        if not self._context:
            bindings.llama_model_free(self._model)
            raise ConfigurationError(f"llama.cpp could not create a context for {path.name} (out of memory?).")
        self._vocab = bindings.llama_model_get_vocab(self._model)
        self.vocab_size = int(bindings.llama_vocab_n_tokens(self._vocab))
        self.store_bytes_per_token = int(self._lib.llama_diffusion_pkv_bytes_per_token(self._model, False))
        self._batch = bindings.llama_batch_init(self.batch_size, 0, 1)
        self._no_self_conditioning = np.zeros((canvas_length, self.vocab_size), dtype=np.float32)

    # --- text ---------------------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of rendered text; special tokens in it are parsed, none is added."""
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(
                "The prompt is not valid Unicode text: it has an unpaired surrogate (a lone \\ud800-\\udfff)."
            ) from None
        room = len(data) + 16
        tokens = (self._api.llama_token * room)()
        count = self._api.llama_tokenize(self._vocab, data, len(data), tokens, room, False, True)
        if count < 0:  # cannot happen with room for a token per byte; checked, not assumed
            raise InvalidRequestError(f"llama.cpp could not tokenize the prompt ({-count} tokens needed).")
        return list(tokens[:count])

    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        """Text of token ids; special tokens are spelled out unless skipped."""
        if not ids:
            return ""
        tokens = (self._api.llama_token * len(ids))(*ids)
        room = 16 * len(ids) + 64
        while True:
            text = ctypes.create_string_buffer(room)
            count = self._api.llama_detokenize(
                self._vocab, tokens, len(ids), text, room, skip_special_tokens, not skip_special_tokens
            )
            if count >= 0:
                return text.raw[:count].decode("utf-8", errors="replace")
            room = -count + 1

    def token_id(self, text: str) -> int | None:
        """The id of a token written exactly as `text`, or None."""
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 and self.decode(ids) == text else None

    # --- the network ----------------------------------------------------------------------------------------------

    def prefill(self, tokens: list[int], start: int, capacity: int) -> np.ndarray:
        """Write `tokens` at positions `start`.. into the K/V store, causally (the encoder pass); return the last
        position's next-token logits (the sampler never needs them; they show the pass is the torch engine's).

        `capacity` is the request's whole context (prompt and every canvas it may commit). A request's first prefill
        (`start` 0) sizes the store for it; later ones continue where the last ended, with the same capacity (a
        store that grows is reallocated empty)."""
        if not tokens:
            raise ValueError("a prefill needs at least one token")
        if start == 0:
            self._check_context(0, len(tokens))
            if len(tokens) > capacity:
                raise RuntimeError(f"{len(tokens)} tokens do not fit a store of {capacity}")
            self._reserve_store(capacity)
        elif start != self._written or capacity != self._request_capacity:
            raise RuntimeError(
                f"a prefill at {start} with capacity {capacity} does not continue the request's ({self._written} "
                f"written of {self._request_capacity})"
            )
        if start + len(tokens) > capacity:
            raise RuntimeError(f"positions up to {start + len(tokens)} written into a store of {capacity}")
        for chunk_start in range(0, len(tokens), self.batch_size):
            chunk = tokens[chunk_start : chunk_start + self.batch_size]
            offset = start + chunk_start
            self._check_positions(len(chunk), offset)
            self._lib.llama_diffusion_set_phase(self._model, PREFILL, capacity, offset)
            self._decode(chunk, offset, outputs="last")
            self._store_capacity = max(self._store_capacity, capacity)
            self._written = offset + len(chunk)
        last = np.ctypeslib.as_array(self._api.llama_get_logits_ith(self._context, -1), shape=(self.vocab_size,))
        return np.array(last, dtype=np.float32)

    def denoise(self, canvas: np.ndarray, prefix: int, previous: np.ndarray | None, temperature: float) -> np.ndarray:
        """The canvas's fp32 logits ([C, V], softcapped), bidirectional over the `prefix` stored positions and
        itself. `previous` is the last step's raw logits for self-conditioning (None on a canvas's first step),
        taken at that step's `temperature`."""
        length = self.canvas_length
        if canvas.shape != (length,):
            raise ValueError(f"a canvas has {length} tokens, not {canvas.shape}")
        self._check_positions(length, prefix)
        if not 0 < prefix <= self._written:
            raise RuntimeError(f"a canvas after {prefix} positions; the store holds {self._written} written ones")
        if previous is None:  # off, but read all the same: it must hold numbers, not garbage
            source, use = self._no_self_conditioning, 0.0
        else:
            source, use = np.ascontiguousarray(previous, dtype=np.float32), 1.0  # read in place, not copied
            if source.shape != (length, self.vocab_size):
                raise ValueError(f"self-conditioning logits are [{length}, {self.vocab_size}], not {source.shape}")
        pointer = source.ctypes.data_as(ctypes.POINTER(ctypes.c_float))  # `source` outlives the decode below
        self._lib.llama_diffusion_set_sc(self._model, pointer, use, 1.0 / temperature, True)
        self._lib.llama_diffusion_set_phase(self._model, DECODE, prefix, 0)
        self._decode(canvas.tolist(), prefix, outputs="all")
        logits = np.ctypeslib.as_array(self._api.llama_get_logits(self._context), shape=(length, self.vocab_size))
        return np.array(logits, dtype=np.float32)  # a copy: the next decode overwrites llama.cpp's buffer

    def reset(self) -> None:
        """Back to the model's resting state after a request (no self-conditioning input, unified phase)."""
        self._lib.llama_diffusion_set_sc(self._model, None, 0.0, 1.0, True)
        self._lib.llama_diffusion_set_phase(self._model, UNIFIED, 0, 0)

    def close(self) -> None:
        """Free the batch, the context and the model (once)."""
        if self._context:
            self._api.llama_batch_free(self._batch)
            self._api.llama_free(self._context)
            self._api.llama_model_free(self._model)
            self._context = self._model = None

    def _reserve_store(self, capacity: int) -> None:
        """Start a request whose context is `capacity` positions: refuse it when its prompt store cannot fit."""
        self._request_capacity, self._written = capacity, 0
        growth = (capacity - self._store_capacity) * self.store_bytes_per_token
        available = available_memory()
        if growth > 0 and available is not None and growth > available:
            raise InvalidRequestError(
                f"A context of {capacity} tokens (prompt plus max_tokens) needs {growth / 2**30:.2f} GiB more for "
                f"llama.cpp's prompt store, but {available / 2**30:.2f} GiB is available. Lower max_tokens or shorten "
                "the prompt."
            )

    def _check_positions(self, count: int, start: int) -> None:
        """Refuse a decode that would make llama.cpp abort the process (its GGML_ASSERTs): no model, more tokens
        than one batch holds, positions past the context."""
        if not self._context:
            raise RuntimeError("the llama.cpp model is closed")
        if not 0 < count <= self.batch_size:
            raise RuntimeError(f"{count} tokens in one decode; llama.cpp takes 1 to {self.batch_size}")
        self._check_context(start, start + count)

    def _check_context(self, start: int, end: int) -> None:
        if start < 0 or end > self.context:
            raise InvalidRequestError(
                f"Positions {start} to {end} do not fit the context of {self.context} tokens; shorten the prompt or "
                "lower max_tokens."
            )

    def _decode(self, tokens: list[int], start: int, *, outputs: str) -> None:
        batch = self._batch
        for index, token in enumerate(tokens):
            if not 0 <= token < self.vocab_size:
                raise InvalidRequestError(f"token id {token} is outside the vocabulary of {self.vocab_size}")
            batch.token[index] = token
            batch.pos[index] = start + index
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = 0
            batch.logits[index] = outputs == "all" or index == len(tokens) - 1
        batch.n_tokens = len(tokens)
        status = self._api.llama_decode(self._context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")


_SILENT: list[Any] = []  # the log callback llama.cpp holds: alive as long as the process


def _silence(bindings: Any) -> None:
    """Send llama.cpp's log lines nowhere (once per process; the callback must outlive every model)."""
    if not _SILENT:
        _SILENT.append(bindings.llama_log_callback(lambda level, text, data: None))
        bindings.llama_log_set(_SILENT[0], None)


def _bind(library: Any) -> Any:
    """Declare the PR functions' C signatures (include/llama.h at c3fb97241) on the loaded library."""
    model = ctypes.c_void_p
    floats = ctypes.POINTER(ctypes.c_float)
    ints = ctypes.POINTER(ctypes.c_int)
    signatures: dict[str, tuple[list[Any], Any]] = {
        "llama_diffusion_set_sc": ([model, floats, ctypes.c_float, ctypes.c_float, ctypes.c_bool], None),
        "llama_diffusion_set_device_sc": ([model, ctypes.c_bool], None),
        "llama_diffusion_set_phase": ([model, ctypes.c_int, ctypes.c_int32, ctypes.c_int32], None),
        "llama_diffusion_device_sample": (
            [model, floats, ints, floats, ints, ctypes.c_int, ctypes.c_float],
            ctypes.c_bool,
        ),
        "llama_diffusion_pkv_bytes_per_token": ([model, ctypes.c_bool], ctypes.c_size_t),
    }
    for name, (arguments, result) in signatures.items():
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, result
    return library


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable), or None where that cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
