"""Which keys a query sees: the one rule every attention path builds its mask from."""

from __future__ import annotations

from typing import Optional

import torch


def visible_keys(key_pos: torch.Tensor, query_pos: torch.Tensor, window: Optional[int]) -> torch.Tensor:
    """Bool (T, S): key_pos (S,) <= query_pos (T,) and, with a sliding window (Mistral), key_pos >
    query_pos - window, i.e. the query and the window - 1 positions before it (transformers' rule)."""
    mask = key_pos[None, :] <= query_pos[:, None]
    if window is not None:
        mask = mask & (key_pos[None, :] > query_pos[:, None] - window)
    return mask
