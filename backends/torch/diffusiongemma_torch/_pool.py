"""Continuous batching: rows join and leave at any denoising step, each on its own canvas clock.

A row is one request: its KV cache (a slot of the pool's `CacheSlab`), its sampler settings, its random generator, its
canvas. `RowPool.step()` is one denoising pass over every row, whatever its canvas, step or settings, as the
reference sampler runs it (shared/reference/diffusiongemma-model.md §6): 1. temperature (each row its own
schedule), 2. forward (one pass; each row attends over its own cache), 3. accept (each row its own entropy bound),
4. renoise (each row from its own generator), 5. stop (each row its own rule); 6. commit: a row whose canvas has
converged or run out of steps commits it at once (an encoder pass over that row's cache) and starts its next canvas,
or leaves the pool when it is finished. The vocabulary-sized work (logits, probabilities, entropies) runs for as many
rows at a time as `workspace_bytes` allows, so its memory does not grow with the batch.

A row consumes its generator exactly as `generate_canvases` does for one prompt with one generator, so its tokens are
what its prompt gets alone, up to the rounding of batched arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffusiongemma_sdk._local.settings import SamplerSettings
from diffusiongemma_torch._admission import PREFILL_CHUNK, SAMPLING_COPIES, SAMPLING_WORKSPACE_BYTES
from diffusiongemma_torch._engine import CanvasCommitted, DenoiseStep
from diffusiongemma_torch._model import CacheSlab, DiffusionGemmaTextNet, KVCache
from diffusiongemma_torch._prefix import PrefixCache
from diffusiongemma_torch._rows import committed_tokens
from diffusiongemma_torch._sampler import (
    LinearTemperatureSchedule,
    SharedRandomness,
    StableAndConfidentStop,
    VocabBuffers,
    ban_tokens,
    entropy_bound_acceptance,
    self_conditioning_probabilities,
    token_distribution,
)

__all__ = ["Row", "RowPool"]

Report = DenoiseStep | CanvasCommitted


@dataclass(eq=False)
class Row:
    """One request's state in the pool: what it needs between steps."""

    settings: SamplerSettings
    cache: KVCache
    slot: int
    randomness: SharedRandomness
    max_canvases: int
    canvas_index: int = 0
    steps_left: int = 0
    passes: int = 0
    canvas_steps: int = 0
    finished: bool = False
    noisy: torch.Tensor = field(init=False)  # [1, L] the canvas the next pass reads
    argmax: torch.Tensor = field(init=False)  # [1, L] the draft
    soft: torch.Tensor | None = None  # [1, L, hidden] the last step's soft tokens
    prompt: list[int] | None = None  # until it is prefilled, at the row's first step
    schedule: LinearTemperatureSchedule = field(init=False)
    stop: StableAndConfidentStop = field(init=False)

    def start_canvas(self, length: int) -> None:
        """A fully noised canvas, the schedule from its first step, an empty stop history."""
        settings = self.settings
        self.noisy = self.randomness.new_canvas()
        self.randomness.prefetch()  # drawn while the first denoising pass runs
        self.argmax, self.soft, self.canvas_steps = self.noisy.clone(), None, 0
        self.steps_left = settings.max_denoising_steps
        self.schedule = LinearTemperatureSchedule(settings.t_min, settings.t_max, settings.max_denoising_steps)
        self.stop = StableAndConfidentStop(
            settings.stability_threshold,
            settings.confidence_threshold,
            settings.max_denoising_steps,
            (1, length),
            self.noisy.device,
        )


class RowPool:
    """The rows being generated on one network; `step()` advances all of them by one denoising pass."""

    def __init__(
        self,
        net: DiffusionGemmaTextNet,
        *,
        stop_token_ids: tuple[int, ...],
        pad_token_id: int,
        prefix_cache: PrefixCache | None = None,
        workspace_bytes: int = SAMPLING_WORKSPACE_BYTES,
    ) -> None:
        self.net = net
        self.prefix_cache = prefix_cache
        self.rows: list[Row] = []  # row i holds slot i of the slab
        self.slab: CacheSlab | None = None
        self.buffers = VocabBuffers()  # the sampling's vocabulary-sized tensors, reused from step to step
        self._length = net.config.canvas_length
        self._vocab = net.config.vocab_size
        self._stops = torch.tensor(stop_token_ids, device=net.embed_tokens.weight.device)
        self._pad = pad_token_id
        canvas_bytes = SAMPLING_COPIES * self._length * self._vocab * 4
        self.group = max(1, workspace_bytes // canvas_bytes)  # rows whose vocabulary-sized work runs at once

    def admit(
        self, prompt_ids: list[int], settings: SamplerSettings, generator: torch.Generator, max_canvases: int
    ) -> Row:
        """Add a request's row, with a slot of the slab for its whole context; its prompt is prefilled at the next
        step, together with the prompts of the other rows that join then, and the row denoised from that step on."""
        slot = len(self.rows)
        slab = self._slab_for(slot + 1, len(prompt_ids) + max_canvases * self._length)
        randomness = SharedRandomness(generator, 1, self._length, self._vocab, reference=settings.reference)
        row = Row(
            settings=settings,
            cache=slab.cache(slot),
            slot=slot,
            randomness=randomness,
            max_canvases=max_canvases,
            prompt=prompt_ids,
        )
        self.rows.append(row)
        return row

    def remove(self, row: Row) -> None:
        """Take a row out (finished, or its reader gone) and release what it holds: the last row moves into its
        slot, so that the rows keep slots 0 to n - 1."""
        if row not in self.rows:
            return
        row.randomness.close()
        last = self.rows.pop()
        if last is not row:
            assert self.slab is not None
            self.slab.move(last.slot, row.slot)
            last.slot = row.slot
            last.cache.rebind(*self.slab.views(last.slot))
            self.rows[row.slot] = last
        if not self.rows:
            self.slab = None  # an idle engine holds no cache
            self.buffers.release()

    @torch.inference_mode()
    def step(self) -> dict[Row, list[Report]]:
        """One denoising pass over every row; the reports each row made (its step, and its canvas if it committed
        one). Finished rows leave the pool."""
        rows = list(self.rows)
        if not rows:
            return {}
        net = self.net
        self._prefill([row for row in rows if row.prompt is not None])
        assert self.slab is not None
        canvas = torch.cat([row.noisy for row in rows])
        soft = None
        if any(row.soft is not None for row in rows):
            zeros = torch.zeros(1, self._length, net.config.hidden_size, dtype=net.dtype, device=canvas.device)
            soft = torch.cat([zeros if row.soft is None else row.soft for row in rows])
        # 2. forward: one pass, each row over its own cache
        hidden = net.denoise_rows(canvas, self.slab, [row.cache for row in rows], soft)
        reports: dict[Row, list[Report]] = {}
        for start in range(0, len(rows), self.group):
            group = rows[start : start + self.group]
            reports.update(self._sample(group, hidden[start : start + len(group)]))
        for row in rows:
            if row.finished:
                self.remove(row)
        return reports

    def _prefill(self, joining: list[Row]) -> None:
        """The prompts of rows that joined since the last step, in blocks of `PREFILL_CHUNK` tokens. With a prefix
        cache, the blocks it already holds for these very tokens are copied instead of encoded, and the blocks encoded
        here are kept for later prompts. Prompts of one block that reuse nothing are encoded together, in one pass."""
        together: list[tuple[Row, list[int]]] = []
        for row in joining:
            assert row.prompt is not None
            reused = self.prefix_cache.reuse(row.prompt, row.cache) if self.prefix_cache is not None else 0
            if reused == 0 and len(row.prompt) <= PREFILL_CHUNK:
                together.append((row, row.prompt))
            else:
                self._prefill_alone(row, row.prompt, reused)
        if len(together) == 1:  # alone, as a prompt served one at a time always was
            self._prefill_alone(*together[0], start=0)
        elif together:
            self._prefill_together(together)
        for row in joining:
            row.prompt = None
            row.start_canvas(self._length)

    def _prefill_together(self, rows: list[tuple[Row, list[int]]]) -> None:
        """Prompts of one block each, into empty caches, in one causal pass over right-padded rows."""
        assert self.slab is not None
        prompts = [prompt for _, prompt in rows]
        ids = torch.full((len(prompts), max(map(len, prompts))), self._pad, device=self._stops.device)
        for index, prompt in enumerate(prompts):
            ids[index, : len(prompt)] = torch.tensor(prompt, device=ids.device)
        caches = [row.cache for row, _ in rows]
        self.net.encode_fresh_rows(ids, list(map(len, prompts)), self.slab, [row.slot for row, _ in rows], caches)
        if self.prefix_cache is not None:
            for prompt, cache in zip(prompts, caches, strict=True):
                self.prefix_cache.keep(prompt, cache)

    def _prefill_alone(self, row: Row, prompt_ids: list[int], start: int) -> None:
        """A prompt's tokens from `start` on, encoded into its row's cache a block at a time."""
        prompt = torch.tensor([prompt_ids], device=self._stops.device)
        for block in range(start, len(prompt_ids), PREFILL_CHUNK):
            self.net.encode(prompt[:, block : block + PREFILL_CHUNK], row.cache)
            if self.prefix_cache is not None:
                self.prefix_cache.keep(prompt_ids, row.cache)

    def _sample(self, rows: list[Row], hidden: torch.Tensor) -> dict[Row, list[Report]]:
        """Steps 1 and 3 to 6 for some rows, from their final hidden states."""
        net, device = self.net, hidden.device
        shape = (len(rows), self._length, self._vocab)
        logits = net.logits(hidden, out=self.buffers.get("logits", shape, device))
        for index, row in enumerate(rows):
            ban_tokens(logits[index], row.settings.banned_token_ids)
        # 1. temperature: each row's schedule, linear from t_max at its first step towards t_min at its last
        temperature = torch.stack([row.schedule.at(row.steps_left, device) for row in rows]).view(-1, 1, 1)
        scaled = logits.div_(temperature)
        probabilities, entropy = self._distribution(rows, scaled, self.buffers.get("probabilities", shape, device))
        # 3. accept: each row's lowest-entropy positions within its own entropy bound
        bounds = torch.tensor([[row.settings.entropy_bound] for row in rows], device=device)
        accepted = entropy_bound_acceptance(entropy, bounds)
        argmax = torch.argmax(scaled, dim=-1)
        reports: dict[Row, list[Report]] = {}
        for index, row in enumerate(rows):
            one = slice(index, index + 1)
            # 4. renoise: every position not accepted is redrawn, from the row's own generator
            row.noisy = row.randomness.draw(probabilities[one], accepted[one])
            row.argmax = argmax[one]
            reports[row] = self._advance(row, accepted[one], entropy[one])
        # the soft tokens the next step reads, only for rows whose canvas goes on (a new canvas starts without them):
        # one product per run of such rows, so that no copy of the vocabulary-sized probabilities is made
        going_on = [not isinstance(reports[row][-1], CanvasCommitted) for row in rows]
        for start, stop in _runs(going_on):
            run = slice(start, stop)
            soft = net.soft_embedding(self_conditioning_probabilities(scaled[run], probabilities[run], net.dtype))
            for offset, row in enumerate(rows[run]):
                row.soft = soft[offset : offset + 1]
        return reports

    def _distribution(
        self, rows: list[Row], scaled: torch.Tensor, out: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities (into `out`) and entropies; rows of the reference sampler get the reference's own entropy
        arithmetic."""
        flags = [row.settings.reference for row in rows]
        if all(flags) or not any(flags):
            return token_distribution(scaled, reference=flags[0], out=out)
        entropies = [
            token_distribution(scaled[i : i + 1], reference=flag, out=out[i : i + 1])[1] for i, flag in enumerate(flags)
        ]
        return out, torch.cat(entropies)

    def _advance(self, row: Row, accepted: torch.Tensor, entropy: torch.Tensor) -> list[Report]:
        """5. stop, and the row's report of this step (and 6. its commit when the canvas is done)."""
        converged = bool(row.stop.converged(row.argmax, entropy)[0])
        row.steps_left -= 1
        row.canvas_steps += 1
        row.passes += 1
        last_step = row.steps_left == 0 or converged
        if not last_step:
            row.randomness.prefetch()
        report: list[Report] = [
            DenoiseStep(
                canvas_index=row.canvas_index,
                step=row.canvas_steps,
                draft=row.argmax.clone(),
                accepted_fraction=accepted.float().mean(dim=-1),
                mean_entropy=entropy.mean(dim=-1),
                denoised=torch.ones(1, dtype=torch.bool, device=entropy.device),
            )
        ]
        if last_step:
            report.append(self._commit(row))
        return report

    def _commit(self, row: Row) -> CanvasCommitted:
        """6. commit: the argmax canvas becomes context (encoder pass), or the row is finished."""
        tokens, stopped = committed_tokens(row.argmax, self._stops, self._pad)
        row.finished = bool(stopped[0]) or row.canvas_index + 1 >= row.max_canvases
        device = tokens.device
        committed = CanvasCommitted(
            canvas_index=row.canvas_index,
            tokens=tokens,
            steps=torch.tensor([row.canvas_steps], device=device),
            finished=torch.tensor([row.finished], device=device),
            decoder_passes=torch.tensor([row.passes], device=device),
        )
        if not row.finished:
            self.net.encode(tokens, row.cache)
            row.canvas_index += 1
            row.start_canvas(self._length)
        return committed

    def _slab_for(self, slots: int, capacity: int) -> CacheSlab:
        """The slab, grown (or made) to hold `slots` rows of `capacity` positions; live rows move into the new one."""
        slab = self.slab
        if slab is not None and slab.slots >= slots and slab.capacity >= capacity:
            return slab
        weight = self.net.embed_tokens.weight
        room = max(self._length, PREFILL_CHUNK)
        wanted_slots = max(slots, 2 * slab.slots if slab is not None else 1)
        wanted_capacity = max(capacity, slab.capacity if slab is not None else 0)
        if slab is None:
            self.slab = CacheSlab(self.net.config, weight.device, weight.dtype, wanted_slots, wanted_capacity, room)
        else:
            self.slab = slab.grown(wanted_slots, wanted_capacity)
            for row in self.rows:
                row.cache.rebind(*self.slab.views(row.slot))
                row.cache.capacity = wanted_capacity
        return self.slab


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """The [start, stop) ranges of consecutive True entries."""
    runs: list[tuple[int, int]] = []
    for index, flag in enumerate(flags):
        if not flag:
            continue
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs
