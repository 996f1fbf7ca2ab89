"""`PrunedLlavaNextForConditionalGeneration`: stock LLaVA-NeXT plus `prune_budget=` in forward and generate.

anyres: the budget applies to all tokens of an image together (base view, crops and row-newline tokens).
"""

from __future__ import annotations

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .modeling_pruned_llava import LlavaPruneHooks
from .pruning import TokenPruningMixin, VisualSegment


class LlavaNextPruneHooks(LlavaPruneHooks):
    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        inner = model.model
        recorded: list[torch.Tensor] = []
        handle = None
        if need_features:
            handle = inner.multi_modal_projector.register_forward_hook(lambda mod, args, out: recorded.append(args[0]))
        try:
            outputs = inner.get_image_features(
                pixel_values=inputs["pixel_values"],
                image_sizes=inputs["image_sizes"],
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            )
        finally:
            if handle is not None:
                handle.remove()
        features_per_image = [None] * len(outputs.pooler_output)
        if need_features:
            # Newline tokens add an LLM-width embedding after packing; packing the pre-projector features the
            # same way, with a zero newline, keeps them aligned token for token.
            num_crops = [
                image_size_to_num_patches(
                    size, model.config.image_grid_pinpoints, model.config.vision_config.image_size
                )
                for size in inputs["image_sizes"]
            ]
            features = torch.split(recorded[0], num_crops)
            strategy = inputs.get("vision_feature_select_strategy") or model.config.vision_feature_select_strategy
            features_per_image, _ = inner.pack_image_features(
                features, inputs["image_sizes"], strategy, image_newline=recorded[0].new_zeros(recorded[0].shape[-1])
            )
        return [
            VisualSegment(embeds, features, model.config.image_token_id, None)
            for embeds, features in zip(outputs.pooler_output, features_per_image, strict=True)
        ]

    def project_features(self, model, features):
        # `encode` packs the row-newline tokens as zero features; their embedding is `image_newline`, not a projection.
        embeds = model.model.multi_modal_projector(features)
        newline = (features == 0).all(dim=-1, keepdim=True)
        return torch.where(newline, model.model.image_newline.to(embeds.dtype), embeds)


class PrunedLlavaNextForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, LlavaNextForConditionalGeneration):
    prune_hooks = LlavaNextPruneHooks()


register_pruned_class(PrunedLlavaNextForConditionalGeneration)

__all__ = ["LlavaNextPruneHooks", "PrunedLlavaNextForConditionalGeneration"]
