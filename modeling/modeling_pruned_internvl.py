"""`PrunedInternVLForConditionalGeneration`: stock InternVL plus `prune_budget=` in forward and generate.

An image is one contiguous run of image placeholders (all its tiles); the budget applies to the run.
"""

from __future__ import annotations

import math

import torch
from transformers import InternVLForConditionalGeneration

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .modeling_pruned_llava import LlavaPruneHooks
from .pruning import TokenPruningMixin, VisualSegment


def placeholder_runs(input_ids: torch.Tensor, token_id: int) -> list[int]:
    """Lengths of the maximal runs of `token_id`, row-major. input_ids: (B, L)."""
    is_token = torch.nn.functional.pad((input_ids == token_id).long(), (1, 1))
    edges = is_token.diff(dim=-1)
    starts = torch.nonzero(edges == 1)
    ends = torch.nonzero(edges == -1)
    return (ends[:, 1] - starts[:, 1]).tolist()


class InternVLPruneHooks(LlavaPruneHooks):
    def vision_feature_dim(self, config) -> int:
        return config.vision_config.hidden_size * int(1 / config.downsample_ratio) ** 2

    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        merged, capture = self.image_features(model, inputs, need_features)
        tokens_per_tile = merged.shape[1]
        side = math.isqrt(tokens_per_tile)
        embeds, features = capture.split(merged.reshape(-1, merged.shape[-1]))
        runs = placeholder_runs(input_ids, model.config.image_token_id)
        if sum(runs) != embeds.shape[0]:
            raise ValueError(
                f"`input_ids` hold {sum(runs)} image placeholder tokens but `pixel_values` give {embeds.shape[0]}"
            )
        segments, offset = [], 0
        for run in runs:
            rows = slice(offset, offset + run)
            offset += run
            # Tiles stacked vertically: an even spread over this grid covers every tile and every region of it.
            grid_hw = (run // side, side) if side * side == tokens_per_tile and run % side == 0 else None
            segments.append(
                VisualSegment(
                    embeds[rows], None if features is None else features[rows], model.config.image_token_id, grid_hw
                )
            )
        return segments


class PrunedInternVLForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, InternVLForConditionalGeneration):
    prune_hooks = InternVLPruneHooks()


register_pruned_class(PrunedInternVLForConditionalGeneration)

__all__ = ["InternVLPruneHooks", "PrunedInternVLForConditionalGeneration", "placeholder_runs"]
