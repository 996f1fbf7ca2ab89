"""`dart`: duplicate-aware token reduction around pivot tokens (DART, a training-free baseline).

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .configuration_token_prune import TokenPruneConfig, check_int
from .selection_ops import check_selection_inputs, unit_rows
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
        num_pivots = min(self.config.dart_num_pivots, num_keep)
        unit = unit_rows(features)
        norms = features.to(unit.dtype).norm(dim=-1)
        pivot_indices = torch.sort(norms, descending=True, stable=True).indices[:num_pivots]
        redundancy = (unit @ unit[pivot_indices].T).max(dim=1).values
        redundancy[pivot_indices] = math.inf
        fill_indices = torch.sort(redundancy, stable=True).indices[: num_keep - num_pivots]
        return torch.sort(torch.cat([pivot_indices, fill_indices])).values


register_selector("dart", DartConfig, DartSelector)
