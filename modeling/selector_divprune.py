"""`divprune`: greedy max-min diversity over cosine distance (DivPrune, a training-free baseline).

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .configuration_token_prune import TokenPruneConfig
from .selection_ops import check_selection_inputs, unit_rows
from .token_selectors import TokenSelector, register_selector

# Rows of the cosine matrix computed at once when DivPrune seeds its greedy search: bounds memory to
# chunk x N floats whatever the image size.
_SIMILARITY_CHUNK_ROWS = 1024


@dataclass
class DivPruneConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `divprune`: no fields besides the shared ones."""

    method: str = field(default="divprune", metadata={"help": "Registered selector name."})


class DivPruneSelector(TokenSelector):
    """Greedy max-min diversity over cosine distance (DivPrune, Alvar et al., CVPR 2025).

    Distance is 1 - cosine similarity. The first token is the one farthest from its nearest other token
    (largest min distance, DivPrune's seed); each next token is the one whose distance to the nearest
    already-selected token is largest. A running min-distance vector is updated with the distances to the
    newly added token only, so the greedy loop costs O(N * num_keep * D) time and O(N) memory. The seed
    needs every token's nearest neighbour, O(N^2 * D) time, read in row chunks so the N x N matrix is never
    held. Ties go to the earlier position.
    """

    papers = ("DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",)

    @torch.no_grad()
    def select(
        self,
        features: torch.Tensor,
        num_keep: int,
        grid_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """features: (N, input_dim) -> keep_indices: (num_keep,) int64 ascending."""
        num_tokens = check_selection_inputs(features, num_keep)
        unit = unit_rows(features)
        keep_indices = torch.empty(num_keep, dtype=torch.int64, device=features.device)
        keep_indices[0] = self._farthest_from_nearest(unit)
        min_distance = torch.full((num_tokens,), math.inf, dtype=unit.dtype, device=unit.device)
        for step in range(num_keep):
            if step > 0:
                keep_indices[step] = torch.argmax(min_distance)
            newest = keep_indices[step]
            min_distance = torch.minimum(min_distance, 1.0 - unit @ unit[newest])
            min_distance[newest] = -math.inf
        return torch.sort(keep_indices).values

    @staticmethod
    def _farthest_from_nearest(unit: torch.Tensor) -> torch.Tensor:
        """unit: (N, D) unit rows -> 0-d int64 index of the token with the largest distance to its nearest other."""
        num_tokens = unit.shape[0]
        nearest_similarity = torch.empty(num_tokens, dtype=unit.dtype, device=unit.device)
        for start in range(0, num_tokens, _SIMILARITY_CHUNK_ROWS):
            stop = min(start + _SIMILARITY_CHUNK_ROWS, num_tokens)
            similarity = unit[start:stop] @ unit.T
            rows = torch.arange(stop - start, device=unit.device)
            similarity[rows, rows + start] = -math.inf
            nearest_similarity[start:stop] = similarity.max(dim=1).values
        # Largest min distance = smallest max similarity; argmin returns the first of tied minima.
        return torch.argmin(nearest_similarity)


register_selector("divprune", DivPruneConfig, DivPruneSelector)
