"""Selection operators: hard top-k (inference) and the differentiable relaxations used in training.

Imports only torch: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import torch


def hard_topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, returned in ascending position order.

    scores: (N,) -> keep_indices: (k,) int64, sorted so kept tokens keep their original order.
    Ties break towards the earlier position, so the result is deterministic.
    """
    if scores.ndim != 1:
        raise ValueError(f"`scores` must be 1-D (N,), got shape {tuple(scores.shape)}")
    num_tokens = scores.shape[0]
    if not 1 <= k <= num_tokens:
        raise ValueError(f"`k` must be in [1, {num_tokens}], got {k}")
    # A stable descending sort breaks ties by position; torch.topk gives no such guarantee.
    order = torch.sort(scores.detach().float(), descending=True, stable=True).indices[:k]
    return torch.sort(order).values
