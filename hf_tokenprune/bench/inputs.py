"""Model inputs of the benchmark presets, laid out as each stock processor lays them out (a batch of one).

Each `*_inputs(...)` returns `make(config, text_tokens, generator) -> dict of tensors` for `Preset.make_inputs`.
"""

from __future__ import annotations

import torch
from transformers import LlavaNextConfig


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


def llava_next_inputs(image_hw: tuple[int, int], token_range: tuple[int, int]):
    def make(config, text_tokens, generator):
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        size = config.vision_config.image_size
        crops = image_size_to_num_patches(image_hw, config.image_grid_pinpoints, size)
        visual = llava_next_token_count(config, image_hw)
        input_ids = _prompt(_text_ids(text_tokens, token_range, generator), [config.image_token_id] * visual)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": torch.randn(1, crops, 3, size, size, generator=generator),
            "image_sizes": torch.tensor([list(image_hw)]),
        }

    return make


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
