"""`dart`: duplicate-aware token reduction around pivot tokens (DART, a training-free baseline).

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .configuration_token_prune import TokenPruneConfig, check_int
from .selection_ops import check_selection_inputs, pad_segments, unit_rows
from .token_selectors import TokenSelector, register_selector


@dataclass
class DartConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `dart`.

    Fields (besides the shared ones):
        dart_num_pivots: pivot tokens per image.
    """

    method: str = field(default="dart", metadata={"help": "Registered selector name."})
    dart_num_pivots: int = field(default=8, metadata={"help": "Pivot tokens per image for `dart` (>= 1)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.dart_num_pivots, "dart_num_pivots", 1)


class DartSelector(TokenSelector):
    """Duplicate-aware token reduction around pivot tokens (DART, Wen et al., 2025).

    Picks `min(config.dart_num_pivots, num_keep)` pivots with the largest feature L2 norm (DART's norm
    criterion, here applied to the tokens the selector reads rather than to LLM keys), then fills the other
    slots with the tokens least redundant with the pivots: the lowest maximum cosine similarity to any pivot.
    A token that duplicates a pivot therefore goes last. The fill is one shared ranking over all pivots,
    not a separate quota per pivot; ties in norm or similarity go to the earlier position.
    """

    papers = ("Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",)

    @torch.no_grad()
    def select(
        self,
        features: torch.Tensor,
        num_keep: int,
        grid_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """features: (N, input_dim) -> keep_indices: (num_keep,) int64 ascending."""
        check_selection_inputs(features, num_keep)
        return self._pivots_and_fill([features], [num_keep])[0]

    @torch.no_grad()
    def select_batch(self, features, num_keep, grid_hw, generator) -> list[torch.Tensor]:
        """Every segment at once, padded to one batch."""
        return self._pivots_and_fill(features, num_keep)

    def _pivots_and_fill(self, features: list[torch.Tensor], num_keep: list[int]) -> list[torch.Tensor]:
        """S segments (N_i, D) -> S keep_indices (num_keep[i],) ascending."""
        padded, token_mask = pad_segments(features)
        unit = unit_rows(padded)
        device = unit.device
        num_pivots = torch.tensor([min(self.config.dart_num_pivots, keep) for keep in num_keep], device=device)
        most_pivots = int(num_pivots.max())
        norms = padded.to(unit.dtype).norm(dim=-1).masked_fill(~token_mask, -math.inf)
        pivot_indices = torch.sort(norms, dim=-1, descending=True, stable=True).indices[:, :most_pivots]
        pivot_used = torch.arange(most_pivots, device=device)[None, :] < num_pivots[:, None]  # (S, P)
        pivot_units = unit.gather(1, pivot_indices[..., None].expand(-1, -1, unit.shape[-1]))
        similarity = torch.bmm(unit, pivot_units.transpose(1, 2)).masked_fill(~pivot_used[:, None, :], -math.inf)
        redundancy = similarity.max(dim=-1).values
        # Pivots and padding go last (inf); the stable sort puts real pivots before padding, and no fill reaches them.
        redundancy = redundancy.masked_fill(~token_mask, math.inf)
        is_pivot = torch.zeros_like(token_mask).scatter_(1, pivot_indices, pivot_used)
        redundancy = redundancy.masked_fill(is_pivot, math.inf)
        fill_order = torch.sort(redundancy, dim=-1, stable=True).indices
        keep_indices = []
        for row, keep in enumerate(num_keep):
            pivots = int(num_pivots[row])
            chosen = torch.cat([pivot_indices[row, :pivots], fill_order[row, : keep - pivots]])
            keep_indices.append(torch.sort(chosen).values)
        return keep_indices


register_selector("dart", DartConfig, DartSelector)
