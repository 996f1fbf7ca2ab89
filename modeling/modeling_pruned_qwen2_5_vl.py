"""`PrunedQwen2_5_VLForConditionalGeneration`: stock Qwen2.5-VL plus `prune_budget=` in forward and generate.

Selection unit: one merged 2 x 2 patch group (one LLM token); video frames (temporal patch groups) are
pruned like images. Kept tokens keep their 3-D M-RoPE positions.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLForConditionalGeneration

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .pruning import ArchitectureHooks, CaptureProjectorInput, PrunePlan, TokenPruningMixin, VisualSegment


class Qwen2_5_VLPruneHooks(ArchitectureHooks):
    vision_input_names = (
        "pixel_values",
        "pixel_values_videos",
        "image_grid_thw",
        "video_grid_thw",
        "second_per_grid_ts",
        "mm_token_type_ids",
    )

    def visual_token_ids(self, model) -> tuple[int, ...]:
        return (model.config.image_token_id, model.config.video_token_id)

    def vision_feature_dim(self, config) -> int:
        vision = config.vision_config
        return vision.hidden_size * vision.spatial_merge_size**2

    def encode(self, model, input_ids, inputs, need_features) -> list[VisualSegment]:
        inner = model.model
        merge = inner.visual.spatial_merge_size
        segments = []
        for pixel_key, grid_key, token_id, encoder in (
            ("pixel_values", "image_grid_thw", model.config.image_token_id, inner.get_image_features),
            ("pixel_values_videos", "video_grid_thw", model.config.video_token_id, inner.get_video_features),
        ):
            if inputs.get(pixel_key) is None:
                continue
            grid_thw = inputs[grid_key]
            # The merger sees window-ordered patches; appending its input to its output lets the stock code
            # restore raster order for both.
            capture = CaptureProjectorInput(inner.visual.merger, inner.visual.merger.hidden_size, need_features)
            with capture:
                outputs = encoder(inputs[pixel_key], grid_thw)
            for merged, (frames, height, width) in zip(outputs.pooler_output, grid_thw.tolist(), strict=True):
                embeds, features = capture.split(merged)
                per_frame = height * width // merge**2
                for frame in range(frames):
                    rows = slice(frame * per_frame, (frame + 1) * per_frame)
                    segments.append(
                        VisualSegment(
                            embeds=embeds[rows],
                            features=None if features is None else features[rows],
                            token_id=token_id,
                            grid_hw=(height // merge, width // merge),
                        )
                    )
        return segments

    def project_features(self, model, features):
        # The merger normalises each patch (ln_q over the vision width) and regroups 2 x 2 patches itself.
        merger = model.model.visual.merger
        return merger(features.reshape(-1, model.config.vision_config.hidden_size))

    def token_pixel_dim(self, model):
        vision = model.config.vision_config
        return vision.spatial_merge_size**2 * vision.in_channels * vision.temporal_patch_size * vision.patch_size**2

    def token_pixels(self, model, inputs):
        # The processor lays out each merge group's patches contiguously, in the LLM tokens' raster order.
        merge = model.config.vision_config.spatial_merge_size
        pixels = []
        for pixel_key, grid_key in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            if inputs.get(pixel_key) is None:
                continue
            grouped = inputs[pixel_key].reshape(-1, merge**2 * inputs[pixel_key].shape[-1])
            offset = 0
            for frames, height, width in inputs[grid_key].tolist():
                per_frame = height * width // merge**2
                for _ in range(frames):
                    pixels.append(grouped[offset : offset + per_frame])
                    offset += per_frame
        return pixels

    def position_ids(self, model, input_ids, attention_mask, inputs):
        token_types = inputs.get("mm_token_type_ids")
        if token_types is None:
            token_types = (input_ids == model.config.image_token_id).int() + 2 * (
                input_ids == model.config.video_token_id
            ).int()
        positions, _ = model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=token_types,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=attention_mask,
        )
        return positions

    def after_generate_plan(self, model, plan: PrunePlan) -> None:
        # Keep the cached deltas consistent with the shorter sequence, so a later decode step without
        # explicit positions (stock `compute_3d_position_ids`) continues at the unpruned positions.
        real = plan.attention_mask.bool()
        last_position = plan.position_ids.masked_fill(~real, -1).amax(dim=(0, 2))
        model.model.rope_deltas = (last_position + 1 - real.sum(-1))[:, None]


class PrunedQwen2_5_VLForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, Qwen2_5_VLForConditionalGeneration):
    prune_hooks = Qwen2_5_VLPruneHooks()


register_pruned_class(PrunedQwen2_5_VLForConditionalGeneration)

__all__ = ["PrunedQwen2_5_VLForConditionalGeneration", "Qwen2_5_VLPruneHooks"]
