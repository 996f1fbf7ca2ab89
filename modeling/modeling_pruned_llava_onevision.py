"""`PrunedLlavaOnevisionForConditionalGeneration`: stock LLaVA-OneVision plus `prune_budget=` in forward and generate.

Selection units:

- an image: all its tokens together, as for LLaVA-NeXT. A sample's only image is laid out anyres (base view, then
  the unpadded crops with a newline after every row, bilinearly shrunk first when they exceed `vision_aspect_ratio`
  "anyres_max_<n>" base views); an image of a sample with several (`batch_num_images`) is its base view plus one
  newline. Newline tokens are ordinary members of the unit: a selector may drop them.
- a video frame: the frame's 2 x 2-pooled tokens (`get_video_features`, `apply_pooling`), a grid, so frames are
  pruned like images (contract line 2). The one newline the stock model appends after a video's last frame is a
  unit of its own; one token always keeps max(1, round(b * 1)) = 1, so per-frame budgets stay exact and the video
  keeps its end marker. With `prune_budget_scope="sample"` it joins the sample's unit like every other token.

Every method applies at inference. Selectors that read `vision_features` (autoselect, reconstruction) get the
projector's input laid out as the stock code lays out its output: image crops packed by the stock
`pack_image_features` (unpadding and the anyres_max bilinear shrink act per channel, so they commute with the
choice of features), video frames pooled by the stock `apply_pooling`, and a zero vector at every newline, whose
embedding is `image_newline` rather than a projection. The stock model shrinks / pools projected tokens, and the
projector is not linear, so training (autoselect) projects altered features with `project_segment_features`: the
projection plus the fixed per-token offset that makes unaltered features give the stock tokens.

`token_pixels` (the optional image reconstructor of `reconstruction` training) is not provided: an unpadded, shrunk
or pooled token has no pixel patch of its own; the recipe refuses `image_reconstruction=True` before training.
"""

from __future__ import annotations

import math

import torch
from transformers import LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .modeling_pruned_llava_next import LlavaNextPruneHooks
from .pruning import TokenPruningMixin, VisualSegment


class RecordProjectorInput:
    """Context manager: keep the input of every projector call made inside it (when `enabled`)."""

    def __init__(self, projector: torch.nn.Module, enabled: bool) -> None:
        self.projector, self.enabled, self.handle = projector, enabled, None
        self.inputs: list[torch.Tensor] = []

    def __enter__(self):
        if self.enabled:
            self.handle = self.projector.register_forward_hook(lambda module, args, output: self.inputs.append(args[0]))
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()


class LlavaOnevisionPruneHooks(LlavaNextPruneHooks):
    vision_input_names = (
        "pixel_values",
        "image_sizes",
        "pixel_values_videos",
        "image_sizes_videos",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "vision_aspect_ratio",
        "batch_num_images",
    )

    def visual_token_ids(self, model) -> tuple[int, ...]:
        return (model.config.image_token_id, model.config.video_token_id)

    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        segments = []
        if inputs.get("pixel_values") is not None:
            segments += self._encode_images(model, inputs, need_features)
        if inputs.get("pixel_values_videos") is not None:
            segments += self._encode_videos(model, inputs, need_features)
        return segments

    def _encode_images(self, model, inputs, need_features) -> list[VisualSegment]:
        inner = model.model
        # The arguments of the stock forward's call: it leaves `vision_aspect_ratio` to the config.
        with RecordProjectorInput(inner.multi_modal_projector, need_features) as record:
            outputs = inner.get_image_features(
                inputs["pixel_values"],
                inputs["image_sizes"],
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                batch_num_images=inputs.get("batch_num_images"),
                return_dict=True,
            )
        features_per_image = [None] * len(outputs.pooler_output)
        if need_features:
            features = record.inputs[0]
            batch_num_images = inputs.get("batch_num_images")
            # As the stock code: only an image alone in its sample is cut into crops.
            alone = (
                [True] * len(inputs["image_sizes"])
                if batch_num_images is None
                else [count == 1 for count in batch_num_images.tolist() for _ in range(count)]
            )
            num_crops = [
                image_size_to_num_patches(
                    size, model.config.image_grid_pinpoints, model.config.vision_config.image_size
                )
                if single
                else 1
                for size, single in zip(inputs["image_sizes"], alone, strict=True)
            ]
            features_per_image, _ = inner.pack_image_features(
                torch.split(features, num_crops),
                inputs["image_sizes"],
                image_newline=features.new_zeros(features.shape[-1]),
                vision_aspect_ratio=model.config.vision_aspect_ratio,
            )
        return [
            VisualSegment(embeds, features, model.config.image_token_id, None)
            for embeds, features in zip(outputs.pooler_output, features_per_image, strict=True)
        ]

    def _encode_videos(self, model, inputs, need_features) -> list[VisualSegment]:
        inner = model.model
        pixel_values_videos = inputs["pixel_values_videos"]
        num_videos, num_frames = pixel_values_videos.shape[:2]
        with RecordProjectorInput(inner.multi_modal_projector, need_features) as record:
            outputs = inner.get_video_features(
                pixel_values_videos,
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                return_dict=True,
            )
        embeds = outputs.pooler_output  # (videos, frames * pooled + 1, hidden): the frames, then one newline
        features = inner.apply_pooling(record.inputs[0]) if need_features else None  # (videos * frames, pooled, D)
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        grid_hw = (math.ceil(side / 2), math.ceil(side / 2))
        per_frame = grid_hw[0] * grid_hw[1]
        video_id = model.config.video_token_id
        segments = []
        for video in range(num_videos):
            for frame in range(num_frames):
                frame_features = None if features is None else features[video * num_frames + frame]
                tokens = slice(frame * per_frame, (frame + 1) * per_frame)
                segments.append(VisualSegment(embeds[video, tokens], frame_features, video_id, grid_hw))
            newline_features = None if features is None else features.new_zeros(1, features.shape[-1])
            segments.append(VisualSegment(embeds[video, -1:], newline_features, video_id, None))
        return segments

    def project_segment_features(self, model, segment, features):
        # The stock model shrinks (anyres_max) and pools (video) after its non-linear projector, so the projection of
        # resampled features is off by a fixed amount per token; adding it back keeps unaltered features exact, and
        # the gradient still flows through the projector.
        projected = self.project_features(model, features)
        with torch.no_grad():
            offset = segment.embeds - self.project_features(model, segment.features)
        return projected + offset.to(projected.dtype)


class PrunedLlavaOnevisionForConditionalGeneration(
    TokenPruningMixin, PrunedHubMixin, LlavaOnevisionForConditionalGeneration
):
    prune_hooks = LlavaOnevisionPruneHooks()


register_pruned_class(PrunedLlavaOnevisionForConditionalGeneration)

__all__ = ["LlavaOnevisionPruneHooks", "PrunedLlavaOnevisionForConditionalGeneration"]
