"""GGUF files for tests, written with the SDK's converter or with `gguf` itself (no downloads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter

__all__ = ["random_k_quant", "rewrite_gguf"]


def rewrite_gguf(
    source: Path,
    target: Path,
    *,
    drop_keys: tuple[str, ...] = (),
    architecture: str | None = None,
    tensor: Callable[[str, np.ndarray, GGMLQuantizationType], tuple[np.ndarray, GGMLQuantizationType]] | None = None,
) -> Path:
    """A copy of a GGUF with some metadata keys left out, another architecture name, or tensors re-encoded
    (`tensor(name, raw data, type)` returns the new raw data and type)."""
    reader = GGUFReader(source)
    arch = architecture or str(reader.fields["general.architecture"].contents())
    writer = GGUFWriter(str(target), arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop_keys:
            continue
        value: Any = field.contents()
        kind = field.types[0]
        sub = field.types[-1] if len(field.types) > 1 else None
        new_name = name.replace(f"{reader.fields['general.architecture'].contents()}.", f"{arch}.", 1)
        writer.add_key_value(new_name, value, kind, sub_type=sub)
    for item in reader.tensors:
        data, qtype = np.asarray(item.data), item.tensor_type
        if tensor is not None:
            data, qtype = tensor(item.name, data, qtype)
        writer.add_tensor(item.name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


K_QUANT_SCALE = {GGMLQuantizationType.Q4_K: (0, 2), GGMLQuantizationType.Q6_K: (208, 1)}  # where d (and dmin) lie
"""Byte offset of each block's fp16 scale(s) and how many there are: Q4_K starts with d and dmin, Q6_K ends with d."""


def random_k_quant(rows: int, columns: int, qtype: GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """Valid blocks of a K-quant type with random contents and small scales (values of about 1e-2), as raw bytes
    [rows, bytes per row]: data a real quantizer could have written, without one (gguf-py writes no K-quants)."""
    block, size = GGML_QUANT_SIZES[qtype]
    assert columns % block == 0, f"{columns} columns do not split into {block}-value blocks"
    raw = rng.integers(0, 256, size=(rows, columns // block, size), dtype=np.uint8)
    start, count = K_QUANT_SCALE[qtype]
    scales = rng.uniform(1e-5, 2e-5, size=(rows, columns // block, count)).astype(np.float16)
    raw[..., start : start + 2 * count] = scales.view(np.uint8)
    return raw.reshape(rows, -1)
