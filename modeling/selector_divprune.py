"""`divprune`: greedy max-min diversity over cosine distance (DivPrune, a training-free baseline).

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .configuration_token_prune import TokenPruneConfig
from .selection_ops import check_selection_inputs, pad_segments, unit_rows
from .token_selectors import TokenSelector, register_selector

# Rows of the cosine matrix computed at once (over all segments together) when DivPrune seeds its greedy search:
# bounds memory to chunk x N floats whatever the image size.
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
        check_selection_inputs(features, num_keep)
        return self._greedy_max_min([features], [num_keep])[0]

    @torch.no_grad()
    def select_batch(self, features, num_keep, grid_hw, generator) -> list[torch.Tensor]:
        """Every segment at once: the greedy steps run in order, each step vectorised across the segments."""
        return self._greedy_max_min(features, num_keep)

    def _greedy_max_min(self, features: list[torch.Tensor], num_keep: list[int]) -> list[torch.Tensor]:
        """S segments (N_i, D) -> S keep_indices (num_keep[i],) ascending, the segments padded to one (S, N, D) batch."""
        padded, token_mask = pad_segments(features)
        unit = unit_rows(padded)
        segments, num_tokens = token_mask.shape
        rows = torch.arange(segments, device=unit.device)
        most = max(num_keep)
        keep_indices = torch.empty(segments, most, dtype=torch.int64, device=unit.device)
        keep_indices[:, 0] = self._farthest_from_nearest(unit, token_mask)
        # Padding is never the farthest token: -inf from the start.
        min_distance = torch.full((segments, num_tokens), math.inf, dtype=unit.dtype, device=unit.device)
        min_distance = min_distance.masked_fill(~token_mask, -math.inf)
        # A segment with fewer steps than `most` keeps picking; its extra picks are cut off below.
        for step in range(most):
            if step > 0:
                keep_indices[:, step] = torch.argmax(min_distance, dim=-1)
            newest = keep_indices[:, step]
            similarity = torch.bmm(unit, unit[rows, newest][..., None]).squeeze(-1)
            min_distance = torch.minimum(min_distance, 1.0 - similarity)
            min_distance[rows, newest] = -math.inf
        return [torch.sort(keep_indices[row, :count]).values for row, count in enumerate(num_keep)]

    @staticmethod
    def _farthest_from_nearest(unit: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """unit: (S, N, D) unit rows, token_mask: (S, N) -> (S,) int64: per segment, the token with the largest
        distance to its nearest other token."""
        segments, num_tokens, _ = unit.shape
        nearest_similarity = torch.empty(segments, num_tokens, dtype=unit.dtype, device=unit.device)
        chunk = max(1, _SIMILARITY_CHUNK_ROWS // segments)
        for start in range(0, num_tokens, chunk):
            stop = min(start + chunk, num_tokens)
            similarity = torch.bmm(unit[:, start:stop], unit.transpose(1, 2))
            similarity = similarity.masked_fill(~token_mask[:, None, :], -math.inf)
            rows = torch.arange(stop - start, device=unit.device)
            similarity[:, rows, rows + start] = -math.inf
            nearest_similarity[:, start:stop] = similarity.max(dim=-1).values
        # Largest min distance = smallest max similarity; argmin returns the first of tied minima; padding never wins.
        return torch.argmin(nearest_similarity.masked_fill(~token_mask, math.inf), dim=-1)


register_selector("divprune", DivPruneConfig, DivPruneSelector)
