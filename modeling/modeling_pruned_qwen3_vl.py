"""`PrunedQwen3VLForConditionalGeneration`: stock Qwen3-VL plus `prune_budget=` in forward and generate.

As Qwen2.5-VL (`modeling_pruned_qwen2_5_vl.py`): the selection unit is one merged 2 x 2 patch group (one LLM token),
each video frame (temporal patch group) is a unit of its own, and kept tokens keep their unpruned 3-D positions of the
interleaved M-RoPE (`get_rope_index` of the stock model, which splits videos into frames). What differs:

- DeepStack: the vision tower also returns per-level features that the stock model adds to the hidden states of the
  first LLM layers at the visual positions, computing them only from `pixel_values`. Each segment carries its tokens'
  features of every level as `side_inputs`, compacted with the tokens, and `feed_side_inputs` hands the kept ones and
  the kept visual positions (`visual_pos_masks`) to the language model, so a pruned forward on `inputs_embeds` injects
  exactly what the stock model injects at those tokens.
- Videos: the processor writes a text timestamp (`<t seconds>`) and vision start / end tokens around every frame's
  tokens; they are text, never pruned, and every frame is selected on its own.

Every built-in method applies: `vision_features` (autoselect, reconstruction) are the merger's input, grouped per LLM
token, and `token_pixels` the processor's patches under each token.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import Qwen3VLForConditionalGeneration

from .architectures import register_pruned_class
from .hub_io import PrunedHubMixin
from .modeling_pruned_qwen2_5_vl import Qwen2_5_VLPruneHooks
from .pruning import CaptureProjectorInput, TokenPruningMixin, VisualSegment


class Qwen3VLPruneHooks(Qwen2_5_VLPruneHooks):
    vision_input_names = (
        "pixel_values",
        "pixel_values_videos",
        "image_grid_thw",
        "video_grid_thw",
        "mm_token_type_ids",
    )

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
            capture = CaptureProjectorInput(inner.visual.merger, inner.visual.merger.hidden_size, need_features)
            with capture:
                outputs = encoder(inputs[pixel_key], grid_thw)
            # deepstack_features: [level][item] (tokens of the item, llm_hidden); per token, its levels side by side.
            levels = outputs.deepstack_features or []
            for item, (merged, (frames, height, width)) in enumerate(
                zip(outputs.pooler_output, grid_thw.tolist(), strict=True)
            ):
                embeds, features = capture.split(merged)
                deepstack = torch.cat([level[item] for level in levels], dim=-1) if levels else None
                per_frame = height * width // merge**2
                for frame in range(frames):
                    rows = slice(frame * per_frame, (frame + 1) * per_frame)
                    segments.append(
                        VisualSegment(
                            embeds=embeds[rows],
                            features=None if features is None else features[rows],
                            token_id=token_id,
                            grid_hw=(height // merge, width // merge),
                            side_inputs=None if deepstack is None else deepstack[rows],
                        )
                    )
        return segments

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
            attention_mask=attention_mask,
        )
        return positions

    @contextlib.contextmanager
    def feed_side_inputs(self, model, visual_mask, side_inputs):
        # The stock model passes `visual_pos_masks` / `deepstack_visual_embeds` to its language model by name (None
        # without pixels), so they are filled in on the way in rather than passed through `forward`.
        language_model = model.model.language_model
        width = model.config.vision_config.out_hidden_size
        levels = list(side_inputs[visual_mask].split(width, dim=-1))

        def inject(module, args, kwargs):
            if kwargs.get("deepstack_visual_embeds") is None and visual_mask.any():
                kwargs["visual_pos_masks"], kwargs["deepstack_visual_embeds"] = visual_mask, levels
            return args, kwargs

        handle = language_model.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


class PrunedQwen3VLForConditionalGeneration(TokenPruningMixin, PrunedHubMixin, Qwen3VLForConditionalGeneration):
    prune_hooks = Qwen3VLPruneHooks()


register_pruned_class(PrunedQwen3VLForConditionalGeneration)

__all__ = ["PrunedQwen3VLForConditionalGeneration", "Qwen3VLPruneHooks"]
