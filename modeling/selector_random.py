"""`random`: keeps a uniformly random subset of each image's tokens (a training-free baseline).

Imports only torch and sibling files: this file ships to the Hub as remote code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .configuration_token_prune import TokenPruneConfig, check_int
from .selection_ops import check_selection_inputs
from .token_selectors import TokenSelector, register_selector


@dataclass
class RandomConfig(TokenPruneConfig):
    """`TokenPruneConfig` of `random`.

    Fields (besides the shared ones):
        seed: seed of the selection, so repeated calls select the same tokens.
    """

    method: str = field(default="random", metadata={"help": "Registered selector name."})
    seed: int = field(default=0, metadata={"help": "Seed of the `random` baseline (an int)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self.seed, "seed")


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

    def select_batch(self, features, num_keep, grid_hw, generator) -> list[torch.Tensor]:
        """Every segment at once: without `generator`, one permutation per distinct length serves every segment of
        that length (each call reseeds, so they are the same permutation); a caller's generator is drawn in order."""
        if generator is not None:
            return [
                self.select(segment, keep, generator=generator)
                for segment, keep in zip(features, num_keep, strict=True)
            ]
        permutations: dict[int, torch.Tensor] = {}
        keep_indices = []
        for segment, keep in zip(features, num_keep, strict=True):
            num_tokens = segment.shape[0]
            if num_tokens not in permutations:
                seeded = torch.Generator().manual_seed(self.config.seed)
                permutations[num_tokens] = torch.randperm(num_tokens, generator=seeded)
            keep_indices.append(torch.sort(permutations[num_tokens][:keep]).values.to(segment.device))
        return keep_indices


register_selector("random", RandomConfig, RandomSelector)
