"""Selection operators every method may use at inference: hard top-k and the checks and helpers of the selectors.

The differentiable relaxations used in training (Differentiable Top-K, Soft Top-K, Gumbel keep mask) are not
part of the deployed graph and live in `hf_tokenprune/training/relaxations.py`.

Imports only torch: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def tokens_to_keep(budget: float | int, num_tokens: int) -> int:
    """Contract: a float keeps max(1, round(b * N)) tokens (half rounds up), an int keeps min(K, N)."""
    if isinstance(budget, float):
        return min(num_tokens, max(1, math.floor(budget * num_tokens + 0.5)))
    return min(budget, num_tokens)


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


def pad_segments(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """S segments (N_i, D) -> (padded (S, N, D) zeros after each segment's tokens, token_mask (S, N) True at tokens).

    `torch.nn.utils.rnn.pad_sequence` pads; the mask is built from the lengths.
    """
    for segment in features:
        if segment.ndim != 2:
            raise ValueError(f"`features` must be (N, input_dim) per segment, got shape {tuple(segment.shape)}")
    lengths = torch.tensor([segment.shape[0] for segment in features], device=features[0].device)
    padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
    token_mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
    return padded, token_mask


def hard_topk_indices_padded(scores: torch.Tensor, token_mask: torch.Tensor, num_keep: list[int]) -> list[torch.Tensor]:
    """`hard_topk_indices` of every row at once: scores (S, N), token_mask (S, N) -> S keep_indices (num_keep[i],).

    Padding scores -inf and sits after every real token, so the stable sort ranks it last even against real -inf
    scores: each row's result equals `hard_topk_indices` on its real scores alone.
    """
    lengths = token_mask.sum(-1).tolist()
    for keep, length in zip(num_keep, lengths, strict=True):
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= length:
            raise ValueError(f"`num_keep` must be an int in [1, {length}] per segment, got {keep!r}")
    ranked = scores.detach().float().masked_fill(~token_mask, -math.inf)
    most = max(num_keep)
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[:, :most]
    keep = torch.tensor(num_keep, device=scores.device)
    # Ranks beyond a row's num_keep become a sentinel past every position, so one ascending sort orders every row.
    order = order.masked_fill(torch.arange(most, device=scores.device)[None, :] >= keep[:, None], scores.shape[1])
    order = torch.sort(order, dim=-1).values
    return [order[row, :count] for row, count in enumerate(num_keep)]


def left_padded_compaction(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout of a sequence cut down to its kept positions: keep (B, L) bool -> (source_index (B, Lc), valid
    (B, Lc) bool), Lc the most any row keeps (at least 1). Row b's kept positions, in order, fill its last slots; the
    slots before them are left padding (valid False, source_index 0). Used for the compaction before the language
    model and for fastv's inside it.
    """
    lengths = keep.sum(-1)
    # A row that keeps nothing becomes padding, as a fully masked row is.
    compact_length = max(int(lengths.max()), 1)
    slots = torch.arange(compact_length, device=keep.device)
    valid = slots[None, :] >= compact_length - lengths[:, None]
    # Stable sort puts the kept positions, in order, at the end of each row: that is left padding.
    order = torch.sort(keep.long(), dim=-1, stable=True).indices[:, -compact_length:]
    return order.masked_fill(~valid, 0), valid


def scatter_compacted(
    compact: torch.Tensor, source_index: torch.Tensor, valid: torch.Tensor, full_length: int, fill: float = 0.0
) -> torch.Tensor:
    """Inverse of `left_padded_compaction` for (B, Lc, ...) values: back to (B, full_length, ...), `fill` where no
    valid slot maps."""
    batch, _, *rest = compact.shape
    full = compact.new_full((batch, full_length, *rest), fill)
    rows, cols = torch.nonzero(valid, as_tuple=True)
    full[rows, source_index[rows, cols]] = compact[rows, cols]
    return full


def check_selection_inputs(features: torch.Tensor, num_keep: int) -> int:
    """Validate one image's `features: (N, input_dim)` and `num_keep`, and return N."""
    if features.ndim != 2:
        raise ValueError(f"`features` must be (N, input_dim) for one image, got shape {tuple(features.shape)}")
    num_tokens = features.shape[0]
    if isinstance(num_keep, bool) or not isinstance(num_keep, int) or not 1 <= num_keep <= num_tokens:
        raise ValueError(f"`num_keep` must be an int in [1, {num_tokens}], got {num_keep!r}")
    return num_tokens


def evenly_spaced(count: int, total: int, device: torch.device | None = None) -> torch.Tensor:
    """`count` distinct ascending positions in [0, total), each at the centre of one of `count` equal bins.

    Requires 1 <= count <= total. Returns (count,) int64. Integer arithmetic, so no rounding collisions.
    """
    bins = torch.arange(count, dtype=torch.int64, device=device)
    # Bin centres (j + 1/2) * total / count; consecutive centres are >= 1 apart because count <= total.
    return ((2 * bins + 1) * total) // (2 * count)


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """features: (N, D) -> (N, D) rows scaled to unit L2 norm, in at least float32."""
    return F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)


def auto_keep_count(scores: torch.Tensor, threshold: float, min_keep: int, max_keep: int) -> int:
    """`prune_budget="auto"`'s count for one image: the fewest top-scored tokens whose share of softmax(z) reaches
    `threshold`, z being the image's N scores (N,) z-scored, clamped to [min_keep, max_keep] (1 <= min_keep <=
    max_keep <= N).

    Why z-scores: a method's logit scale is arbitrary (visionselector's bilinear scores reach the hundreds after
    training, so a softmax of raw scores puts all mass on two or three tokens); standardised, the rule reads the shape
    of the score distribution alone, as paper 004 (Eq. 4) standardises scores before its Soft Top-K.
    """
    values = scores.detach().double()
    spread = values.std(correction=0)
    z = (values - values.mean()) / spread if spread > 0 else torch.zeros_like(values)
    mass = torch.sort(torch.softmax(z, dim=-1), descending=True).values.cumsum(-1)
    # Float64 and a small slack: a mass that reaches the threshold up to rounding counts as reaching it.
    reached = int((mass < threshold - 1e-12).sum()) + 1
    return max(min_keep, min(max_keep, reached, scores.shape[0]))
