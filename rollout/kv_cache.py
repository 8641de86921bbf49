"""A KV cache with one slot (row) per sequence, each at its own position.

transformers' attention layers call ``cache.update(key, value, layer_idx)`` and attend over
what it returns; this cache writes each row's new keys at that row's own positions and
returns the active rows up to the longest one. Sequences therefore never share a time axis:
no left padding, positions start at 0 in every row, and a sequence's numbers do not depend
on its neighbours. Active sequences sit in rows ``0..n-1`` (``move`` closes the gaps left by
those that finish), so what attention reads is a view, never a gather.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class SlotCache:
    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_len = max_len
        self._rows = slice(0, 0)
        self._decode_rows: Tensor | None = None  # [n] for a decode step, else None
        self._decode_pos: Tensor | None = None  # [n]
        self._read_len = 0

    def for_decode(self, rows: Tensor, positions: Tensor, read_len: int) -> None:
        """Next forward: rows 0..n-1 (``rows`` [n]: that range), one token each at
        ``positions`` [n]; attention reads positions [0, read_len)."""
        self._rows = slice(0, len(rows))
        self._decode_rows = rows
        self._decode_pos = positions
        self._read_len = read_len

    def for_prefill(self, start: int, count: int, length: int) -> None:
        """Next forward: rows start..start+count-1, ``length`` tokens each from position 0
        (right-padded; what is written past a row's prompt is overwritten or masked)."""
        self._rows = slice(start, start + count)
        self._decode_rows = self._decode_pos = None
        self._read_len = length

    def update(
        self, key_states: Tensor, value_states: Tensor, layer_idx: int, **_: Any
    ) -> tuple[Tensor, Tensor]:
        # key_states, value_states: [b, kv_heads, q, head_dim]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._decode_pos is not None:
            assert self._decode_rows is not None
            keys[self._decode_rows, :, self._decode_pos] = key_states[:, :, 0]
            values[self._decode_rows, :, self._decode_pos] = value_states[:, :, 0]
        else:
            keys[self._rows, :, : key_states.shape[2]] = key_states
            values[self._rows, :, : value_states.shape[2]] = value_states
        # [b, kv_heads, read_len, head_dim] views
        return keys[self._rows, :, : self._read_len], values[self._rows, :, : self._read_len]

    def move(self, dst: Tensor, src: Tensor, length: int) -> None:
        """Copy rows ``src`` [m] into rows ``dst`` [m], positions [0, length)."""
        for t in (*self.keys, *self.values):
            t[dst, :, :length] = t[src, :, :length]


def prefill_mask(lengths: Tensor, length: int) -> Tensor:
    """Causal within each row's prompt; padded keys past a row's prompt are never read.

    lengths: [m] -> [m, 1, length, length] bool
    """
    idx = torch.arange(length, device=lengths.device)  # [S]
    causal = idx[None, :] <= idx[:, None]  # [S, S]: key <= query
    valid = idx[None, :] < lengths[:, None]  # [m, S]: key inside the prompt
    return (causal[None, :, :] & valid[:, None, :])[:, None, :, :]
