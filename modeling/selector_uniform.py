"""`uniform`: keeps tokens spread evenly over each image (a training-free baseline).

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .configuration_token_prune import TokenPruneConfig
from .selection_ops import check_selection_inputs, evenly_spaced
from .token_selectors import TokenSelector, register_selector


@dataclass
class UniformConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `uniform`: no fields besides the shared ones."""

    method: str = field(default="uniform", metadata={"help": "Registered selector name."})


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

    def select_batch(self, features, num_keep, grid_hw, generator) -> list[torch.Tensor]:
        """Every segment at once: positions depend only on (N, num_keep, grid), so `select` runs once per distinct
        (N, num_keep, grid, device)."""
        computed: dict[tuple, torch.Tensor] = {}
        keep_indices = []
        for segment, keep, grid in zip(features, num_keep, grid_hw, strict=True):
            key = (segment.shape[0], keep, None if grid is None else (int(grid[0]), int(grid[1])), segment.device)
            if key not in computed:
                computed[key] = self.select(segment, keep, grid_hw=grid)
            keep_indices.append(computed[key])
        return keep_indices

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


register_selector("uniform", UniformConfig, UniformSelector)
