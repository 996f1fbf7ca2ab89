"""`PrunedLlavaForConditionalGeneration`: stock LLaVA (1.5) plus `prune_budget=` in forward and generate."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import LlavaForConditionalGeneration

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .pruning import ArchitectureHooks, CaptureProjectorInput, TokenPruningMixin, VisualSegment


class LlavaPruneHooks(ArchitectureHooks):
    """LLaVA 1.5; also the base of the LLaVA-NeXT and InternVL hooks (same inputs and placeholder)."""

    vision_input_names = ("pixel_values", "image_sizes", "vision_feature_layer", "vision_feature_select_strategy")

    def visual_token_ids(self, model) -> tuple[int, ...]:
        return (model.config.image_token_id,)

    def vision_feature_dim(self, config) -> int:
        layers = config.vision_feature_layer
        return config.vision_config.hidden_size * (len(layers) if isinstance(layers, (list, tuple)) else 1)

    def project_features(self, model, features):
        return model.model.multi_modal_projector(features)

    def token_pixel_dim(self, model):
        if type(self) is not LlavaPruneHooks:
            return super().token_pixel_dim(model)
        vision = model.config.vision_config
        return vision.num_channels * vision.patch_size**2

    def token_pixels(self, model, inputs):
        # LLaVA-1.5 with the "default" strategy: one visual token per vision patch, raster order, CLS dropped.
        strategy = inputs.get("vision_feature_select_strategy") or model.config.vision_feature_select_strategy
        if type(self) is not LlavaPruneHooks or strategy != "default":
            return super().token_pixels(model, inputs)
        patch = model.config.vision_config.patch_size
        patches = torch.nn.functional.unfold(inputs["pixel_values"], kernel_size=patch, stride=patch)
        return list(patches.transpose(1, 2))

    def image_features(self, model, inputs, need_features, **extra) -> tuple[Any, CaptureProjectorInput]:
        """Stock `get_image_features` with the projector input appended when `need_features`."""
        capture = CaptureProjectorInput(model.model.multi_modal_projector, None, need_features)
        with capture:
            outputs = model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                **extra,
            )
        return outputs.pooler_output, capture

    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        pooled, capture = self.image_features(model, inputs, need_features, image_sizes=inputs.get("image_sizes"))
        segments = []
        for merged in pooled:
            embeds, features = capture.split(merged.reshape(-1, merged.shape[-1]))
            side = math.isqrt(embeds.shape[0])
            grid_hw = (side, side) if side * side == embeds.shape[0] else None
            segments.append(VisualSegment(embeds, features, model.config.image_token_id, grid_hw))
        return segments


class PrunedLlavaForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, LlavaForConditionalGeneration):
    prune_hooks = LlavaPruneHooks()


register_pruned_class(PrunedLlavaForConditionalGeneration)

__all__ = ["LlavaPruneHooks", "PrunedLlavaForConditionalGeneration"]
