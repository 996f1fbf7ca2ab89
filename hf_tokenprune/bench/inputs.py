"""Model inputs of the benchmark presets, laid out as each stock processor lays them out (a batch of one).

Each `*_inputs(...)` returns `make(config, text_tokens, generator) -> dict of tensors` for `Preset.make_inputs`.
"""

from __future__ import annotations

import torch
from transformers import LlavaNextConfig, LlavaOnevisionConfig


def _prompt(text_ids: list[int], visual_block: list[int]) -> torch.Tensor:
    """A chat-like prompt: a third of the text before the image block (system turn), the rest after it."""
    split = len(text_ids) // 3
    return torch.tensor([text_ids[:split] + visual_block + text_ids[split:]])


def _text_ids(count: int, token_range: tuple[int, int], generator: torch.Generator) -> list[int]:
    return torch.randint(*token_range, (count,), generator=generator).tolist()


def qwen2_5_vl_inputs(image_patches: tuple[int, int], token_range: tuple[int, int]):
    def make(config, text_tokens, generator):
        vision = config.vision_config
        rows, cols = image_patches
        visual = rows * cols // vision.spatial_merge_size**2
        block = [config.vision_start_token_id] + [config.image_token_id] * visual + [config.vision_end_token_id]
        input_ids = _prompt(_text_ids(text_tokens - 2, token_range, generator), block)
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(rows * cols, patch_dim, generator=generator),
            "image_grid_thw": torch.tensor([[1, rows, cols]]),
            "mm_token_type_ids": (input_ids == config.image_token_id).int(),
        }

    return make


def qwen3_vl_inputs(image_patches: tuple[int, int], token_range: tuple[int, int]):
    """Qwen3-VL's processor lays out an image as Qwen2.5-VL's does (vision start, one image token per 2 x 2 merged
    patches, vision end; `mm_token_type_ids` 1 on the image tokens); only its patches are larger (16 px, not 14)."""
    return qwen2_5_vl_inputs(image_patches, token_range)


def llava_inputs(token_range: tuple[int, int]):
    def make(config, text_tokens, generator):
        vision = config.vision_config
        visual = (vision.image_size // vision.patch_size) ** 2  # "default" strategy drops CLS
        input_ids = _prompt(_text_ids(text_tokens, token_range, generator), [config.image_token_id] * visual)
        pixel_values = torch.randn(1, 3, vision.image_size, vision.image_size, generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}

    return make


def llava_next_token_count(config: LlavaNextConfig, image_hw: tuple[int, int]) -> int:
    """Visual tokens of one anyres image: base view + unpadded crop grid with one newline token per row."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    rows, cols = get_anyres_image_grid_shape(image_hw, config.image_grid_pinpoints, size)
    side = size // patch
    unpadded = unpad_image(torch.zeros(1, rows * side, cols * side), image_hw)
    return side * side + unpadded.shape[1] * (unpadded.shape[2] + 1)


def llava_next_inputs(image_hw: tuple[int, int], token_range: tuple[int, int], token_count=None, **extra_inputs):
    """Inputs of one anyres image (base view + crops, as the stock processor stacks them). `token_count(config,
    image_hw)` counts its visual tokens (default: LLaVA-NeXT's); `extra_inputs` are further tensors of the batch."""
    token_count = token_count or llava_next_token_count

    def make(config, text_tokens, generator):
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        size = config.vision_config.image_size
        crops = image_size_to_num_patches(image_hw, config.image_grid_pinpoints, size)
        visual = token_count(config, image_hw)
        input_ids = _prompt(_text_ids(text_tokens, token_range, generator), [config.image_token_id] * visual)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(1, crops, 3, size, size, generator=generator),
            "image_sizes": torch.tensor([list(image_hw)]),
            **extra_inputs,
        }

    return make


def llava_onevision_token_count(config: LlavaOnevisionConfig, image_hw: tuple[int, int]) -> int:
    """Visual tokens of an image alone in its sample: base view + unpadded crop grid, shrunk bilinearly when it holds
    more than `vision_aspect_ratio` ("anyres_max_<n>") base views' worth, with one newline token per row."""
    import math

    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image

    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    rows, cols = get_anyres_image_grid_shape(image_hw, config.image_grid_pinpoints, size)
    side = size // patch
    grid_rows, grid_cols = unpad_image(torch.zeros(1, rows * side, cols * side), image_hw).shape[1:]
    max_views = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
    ratio = math.sqrt(grid_rows * grid_cols / (max_views * side**2))
    if ratio > 1.1:
        grid_rows, grid_cols = int(grid_rows // ratio), int(grid_cols // ratio)
    return side * side + grid_rows * (grid_cols + 1)


def llava_onevision_inputs(image_hw: tuple[int, int], token_range: tuple[int, int]):
    """LLaVA-NeXT's anyres layout with OneVision's token count (the anyres_max shrink) and `batch_num_images`."""
    return llava_next_inputs(image_hw, token_range, llava_onevision_token_count, batch_num_images=torch.tensor([1]))


def internvl_inputs(tiles: int, start_end_ids: tuple[int, int], token_range: tuple[int, int]):
    def make(config, text_tokens, generator):
        vision = config.vision_config
        height, width = vision.image_size
        per_tile = int((height // vision.patch_size[0]) * (width // vision.patch_size[1]) * config.downsample_ratio**2)
        block = [start_end_ids[0]] + [config.image_token_id] * (tiles * per_tile) + [start_end_ids[1]]
        input_ids = _prompt(_text_ids(text_tokens - 2, token_range, generator), block)
        pixel_values = torch.randn(tiles, 3, height, width, generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}

    return make


def smolvlm_inputs(grid: tuple[int, int], fake_id: int, token_range: tuple[int, int]):
    """One image split into `grid` (rows, cols) sub-images plus its global view, framed as Idefics3Processor writes it.

    Each view is `image_seq_len` placeholders after `<fake_token_around_image>` (`fake_id`) and a tag
    (`<row_r_col_c>` / `<global-img>`), here one text token each (a checkpoint's tokenizer may spell a tag in
    several); a newline ends every row of sub-images and precedes the global view. The framing counts towards
    `text_tokens` (at least one prompt token is left).
    """

    def make(config, text_tokens, generator):
        vision = config.vision_config
        per_view = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2
        rows, cols = grid
        views = rows * cols + 1
        tags = iter(_text_ids(views, token_range, generator))
        newlines = iter(_text_ids(rows + 1, token_range, generator))
        block = []
        for _ in range(rows):
            for _ in range(cols):
                block += [fake_id, next(tags)] + [config.image_token_id] * per_view
            block += [next(newlines)]
        block += [next(newlines), fake_id, next(tags)] + [config.image_token_id] * per_view + [fake_id]
        framing = len(block) - views * per_view
        input_ids = _prompt(_text_ids(max(text_tokens - framing, 1), token_range, generator), block)
        size = vision.image_size
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(1, views, 3, size, size, generator=generator),
            "pixel_attention_mask": torch.ones(1, views, size, size, dtype=torch.long),
        }

    return make


def gemma3_inputs(newlines_id: int, token_range: tuple[int, int]):
    """One image block as `Gemma3Processor` writes it: "\\n\\n", `<start_of_image>`, `mm_tokens_per_image` soft tokens,
    `<end_of_image>`, "\\n\\n" (`newlines_id` is the tokenizer's "\\n\\n"), with `token_type_ids` marking the soft tokens."""

    def make(config, text_tokens, generator):
        vision = config.vision_config
        visual = [config.image_token_id] * config.mm_tokens_per_image
        block = [newlines_id, config.boi_token_id, *visual, config.eoi_token_id, newlines_id]
        input_ids = _prompt(_text_ids(text_tokens - 4, token_range, generator), block)
        pixel_values = torch.randn(1, 3, vision.image_size, vision.image_size, generator=generator)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
            "token_type_ids": (input_ids == config.image_token_id).long(),
        }

    return make


def qwen2_5_vl_video_inputs(frames: int, frame_patches: tuple[int, int], token_range: tuple[int, int]):
    """One video as Qwen2.5-VL's processor lays it out: `frames` frames of `frame_patches` (rows, cols) patches, two
    frames per temporal patch, one placeholder per 2 x 2 merged patches of each temporal group, between vision start
    and end; `mm_token_type_ids` 2 on the video tokens, one second per temporal group."""

    def make(config, text_tokens, generator):
        vision = config.vision_config
        rows, cols = frame_patches
        groups = frames // vision.temporal_patch_size
        visual = groups * rows * cols // vision.spatial_merge_size**2
        block = [config.vision_start_token_id] + [config.video_token_id] * visual + [config.vision_end_token_id]
        input_ids = _prompt(_text_ids(text_tokens - 2, token_range, generator), block)
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values_videos": torch.randn(groups * rows * cols, patch_dim, generator=generator),
            "video_grid_thw": torch.tensor([[groups, rows, cols]]),
            "second_per_grid_ts": torch.tensor([1.0]),
            "mm_token_type_ids": (input_ids == config.video_token_id).int() * 2,
        }

    return make


def llava_onevision_video_token_count(config: LlavaOnevisionConfig, frames: int) -> int:
    """Video tokens: every frame's patch grid pooled 2 x 2 (rounding up, as the stock `apply_pooling`), one newline."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return frames * (-(-side // 2)) ** 2 + 1


def llava_onevision_video_inputs(frames: int, token_range: tuple[int, int]):
    """One video as LLaVA-OneVision's processor lays it out: `frames` frames at the tower's resolution."""

    def make(config, text_tokens, generator):
        size = config.vision_config.image_size
        visual = [config.video_token_id] * llava_onevision_video_token_count(config, frames)
        input_ids = _prompt(_text_ids(text_tokens, token_range, generator), visual)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values_videos": torch.randn(1, frames, 3, size, size, generator=generator),
        }

    return make


def qwen2_5_vl_batch_inputs(image_patches: list[tuple[int, int]], token_range: tuple[int, int], pad_id: int = 0):
    """A left-padded batch of one image per sample, of the given (rows, cols) patch sizes, as the processor pads it."""
    single = [qwen2_5_vl_inputs(patches, token_range) for patches in image_patches]

    def make(config, text_tokens, generator):
        samples = [make_one(config, text_tokens, generator) for make_one in single]
        length = max(sample["input_ids"].shape[1] for sample in samples)

        def left_pad(values: torch.Tensor, fill: int) -> torch.Tensor:
            return torch.nn.functional.pad(values, (length - values.shape[1], 0), value=fill)

        return {
            "input_ids": torch.cat([left_pad(s["input_ids"], pad_id) for s in samples]),
            "attention_mask": torch.cat([left_pad(s["attention_mask"], 0) for s in samples]),
            "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
            "image_grid_thw": torch.cat([s["image_grid_thw"] for s in samples]),
            "mm_token_type_ids": torch.cat([left_pad(s["mm_token_type_ids"], 0) for s in samples]),
        }

    return make
