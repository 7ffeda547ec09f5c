"""Rows of a contract log → padded request batches ``[B, L]`` (no Python loop over requests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor


@dataclass(frozen=True)
class Slates:
    """Padded per-request arrays. ``B`` requests, ``L`` = the longest request's candidates."""

    request_id: np.ndarray  # [B] in first-appearance order of the sorted table
    row: np.ndarray  # [B, L] row index into the source table, -1 on padding
    mask: Tensor  # [B, L] bool, True on real candidates
    columns: dict[str, Tensor]  # name -> [B, L] float32 (0 on padding)

    def __len__(self) -> int:
        return len(self.request_id)


def to_slates(table: pa.Table, columns: Sequence[str]) -> Slates:
    """Group ``table`` rows by ``request_id`` (ordered by ``position`` then row order within a
    request, unshown candidates last) into padded float tensors for ``columns``."""
    codes = pc.dictionary_encode(table["request_id"]).combine_chunks()
    req = codes.indices.to_numpy(zero_copy_only=False)
    pos = table["position"].to_numpy(zero_copy_only=False) if "position" in table.column_names else None
    pos_key = np.zeros(len(req)) if pos is None else np.nan_to_num(np.asarray(pos, dtype=float), nan=np.inf)
    order = np.lexsort((np.arange(len(req)), pos_key, req))
    req_sorted = req[order]
    counts = np.bincount(req_sorted, minlength=len(codes.dictionary))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(order)) - starts[req_sorted]
    B, L = len(counts), int(counts.max()) if len(counts) else 0
    row = np.full((B, L), -1, dtype=np.int64)
    row[req_sorted, slot] = order
    mask = row >= 0
    out = {}
    for name in columns:
        values = table[name].to_numpy(zero_copy_only=False).astype(np.float32)
        padded = np.zeros((B, L), dtype=np.float32)
        padded[req_sorted, slot] = values[order]
        out[name] = torch.from_numpy(padded)
    return Slates(np.asarray(codes.dictionary.to_pylist(), dtype=object), row, torch.from_numpy(mask), out)
