"""Training-free baselines: `random`, `uniform`, `divprune` and `dart`.

They have no weights, so any model can be compared against them with no checkpoint. Each overrides
`select` and handles one image (N tokens) per call.

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .token_selectors import TokenSelector, register_selector

# Rows of the cosine matrix computed at once when DivPrune seeds its greedy search: bounds memory to
# chunk x N floats whatever the image size.
_SIMILARITY_CHUNK_ROWS = 1024


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


def _unit_rows(features: torch.Tensor) -> torch.Tensor:
    """features: (N, D) -> (N, D) rows scaled to unit L2 norm, in at least float32."""
    return F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)


class RandomSelector(TokenSelector):
    """Keeps a uniformly random subset of `num_keep` tokens.

    Uses `generator` when given; otherwise a fresh generator seeded with `config.seed` on every call, so the
    same (N, num_keep) always selects the same positions and runs are reproducible.
    """

    def select(
        self,
        features: torch.Tensor,
        num_keep: int,
        grid_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """features: (N, input_dim) -> keep_indices: (num_keep,) int64 ascending."""
        num_tokens = check_selection_inputs(features, num_keep)
        if generator is None:
            generator = torch.Generator().manual_seed(self.config.seed)
        order = torch.randperm(num_tokens, generator=generator, device=generator.device)
        return torch.sort(order[:num_keep]).values.to(features.device)


class UniformSelector(TokenSelector):
    """Keeps tokens spread evenly over the image.

    With `grid_hw = (rows, cols)` and rows * cols == N it takes the cell centres of the r x c sub-grid
    (r * c >= num_keep) with the smallest cells, max(rows / r, cols / c), and, when r * c > num_keep, keeps
    `num_keep` of those evenly spaced in raster order, so the surplus is dropped across the whole image
    rather than from its bottom rows. Without a matching grid it keeps evenly spaced positions of the
    1-D token order.
    """

    def select(
        self,
        features: torch.Tensor,
        num_keep: int,
        grid_hw: tuple[int, int] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """features: (N, input_dim); grid_hw: (rows, cols) -> keep_indices: (num_keep,) int64 ascending."""
        num_tokens = check_selection_inputs(features, num_keep)
        device = features.device
        if grid_hw is None or int(grid_hw[0]) * int(grid_hw[1]) != num_tokens:
            return evenly_spaced(num_keep, num_tokens, device)
        rows, cols = int(grid_hw[0]), int(grid_hw[1])
        sub_rows, sub_cols = self._sub_grid(rows, cols, num_keep)
        candidates = (
            evenly_spaced(sub_rows, rows, device)[:, None] * cols + evenly_spaced(sub_cols, cols, device)[None, :]
        ).flatten()
        return candidates[evenly_spaced(num_keep, candidates.numel(), device)]

    @staticmethod
    def _sub_grid(rows: int, cols: int, num_keep: int) -> tuple[int, int]:
        """The (r, c) with r * c >= num_keep whose cells are smallest: least max(rows / r, cols / c).

        Ties prefer the fewest surplus cells r * c - num_keep, then fewer rows. Requires num_keep <= rows * cols.
        """
        options = []
        for sub_rows in range(1, min(rows, num_keep) + 1):
            sub_cols = math.ceil(num_keep / sub_rows)
            if sub_cols <= cols:
                options.append(
                    (max(rows / sub_rows, cols / sub_cols), sub_rows * sub_cols - num_keep, sub_rows, sub_cols)
                )
        _, _, sub_rows, sub_cols = min(options)
        return sub_rows, sub_cols


class DivPruneSelector(TokenSelector):
    """Greedy max-min diversity over cosine distance (DivPrune, Alvar et al., CVPR 2025).

    Distance is 1 - cosine similarity. The first token is the one farthest from its nearest other token
    (largest min distance, DivPrune's seed); each next token is the one whose distance to the nearest
    already-selected token is largest. A running min-distance vector is updated with the distances to the
    newly added token only, so the greedy loop costs O(N * num_keep * D) time and O(N) memory. The seed
    needs every token's nearest neighbour, O(N^2 * D) time, read in row chunks so the N x N matrix is never
    held. Ties go to the earlier position.
    """

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
        unit = _unit_rows(features)
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


class DartSelector(TokenSelector):
    """Duplicate-aware token reduction around pivot tokens (DART, Wen et al., 2025).

    Picks `min(config.dart_num_pivots, num_keep)` pivots with the largest feature L2 norm (DART's norm
    criterion, here applied to the tokens the selector reads rather than to LLM keys), then fills the other
    slots with the tokens least redundant with the pivots: the lowest maximum cosine similarity to any pivot.
    A token that duplicates a pivot therefore goes last. The fill is one shared ranking over all pivots,
    not a separate quota per pivot; ties in norm or similarity go to the earlier position.
    """

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
        unit = _unit_rows(features)
        norms = features.to(unit.dtype).norm(dim=-1)
        pivot_indices = torch.sort(norms, descending=True, stable=True).indices[:num_pivots]
        redundancy = (unit @ unit[pivot_indices].T).max(dim=1).values
        redundancy[pivot_indices] = math.inf
        fill_indices = torch.sort(redundancy, stable=True).indices[: num_keep - num_pivots]
        return torch.sort(torch.cat([pivot_indices, fill_indices])).values


register_selector("random", RandomSelector)
register_selector("uniform", UniformSelector)
register_selector("divprune", DivPruneSelector)
register_selector("dart", DartSelector)
