"""`hf-tokenprune bench`: time-to-first-token, selection overhead and KV memory at real model widths.

Every preset is a stock `transformers` VLM with the published widths of a real checkpoint and random
weights, built from a config (no download). Language-model and vision depth can be reduced by flag:
prefill cost is per layer, so the full-depth figures are extrapolated from per-layer times measured by
forward hooks on every block, and the rows say so (`"extrapolated": true`).

What one measurement is: `model.generate(**inputs, prune_budget=b, max_new_tokens=1)`, exactly what a
user runs, timed end to end (time to first token), with its time attributed by forward hooks on the
stock vision modules and language model and by a wrapper around the selector's `select`. The FLOPs model
of paper 001 (Sec. 5.3) gives the ideal prefill speed-up; the measured one is compared against it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.utils import logging

from . import testing
from .model import get_pruned_model
from .modeling.configuration_token_prune import TokenPruneConfig
from .modeling.token_selectors import available_selectors

logger = logging.get_logger(__name__)

LEARNED_METHODS = ("visionselector", "autoselect", "reconstruction")
TRAINING_FREE_METHODS = ("random", "uniform", "divprune", "dart")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SCHEMA_VERSION = 1


# --------------------------------------------------------------------------------------------- arguments
@dataclass
class BenchArguments:
    """Arguments of `hf-tokenprune bench`.

    Fields: preset, methods, budgets, layers, vision_layers, repeats, warmup, decode_tokens, text_tokens,
    dtype, device, attn_implementation, threads, output, doc, report, profile, profile_method, profile_budget, seed.
    """

    preset: str = field(
        default="qwen2.5-vl-7b",
        metadata={
            "help": "Comma-separated presets: qwen2.5-vl-7b, llava-1.5-7b, llava-next-7b, internvl3-8b "
            "(published widths, random weights), or tiny-qwen2.5-vl, tiny-llava, tiny-llava-next, tiny-internvl."
        },
    )
    methods: str = field(
        default=",".join(LEARNED_METHODS + TRAINING_FREE_METHODS),
        metadata={"help": "Comma-separated selector names; default: every learned and training-free method."},
    )
    budgets: str = field(
        default="0.5,0.3,0.2,0.1", metadata={"help": "Comma-separated fractions of each image's tokens, in (0, 1]."}
    )
    layers: int = field(
        default=2,
        metadata={"help": "Language-model depth to build (0 = the preset's full depth); more is extrapolated."},
    )
    vision_layers: int = field(
        default=2, metadata={"help": "Vision-tower depth to build (0 = full depth); more is extrapolated."}
    )
    repeats: int = field(default=3, metadata={"help": "Timed runs per configuration (>= 1); median and min/max."})
    warmup: int = field(default=1, metadata={"help": "Untimed runs per configuration before timing (>= 0)."})
    decode_tokens: int = field(
        default=8, metadata={"help": "New tokens of the decode-speed run (0 = skip it, else >= 3)."}
    )
    text_tokens: int = field(default=64, metadata={"help": "Non-visual tokens of the prompt (>= 8)."})
    dtype: str = field(default="bfloat16", metadata={"help": f"Model dtype, one of {sorted(DTYPES)}."})
    device: str = field(default="auto", metadata={"help": "`cpu`, `cuda` or `auto` (cuda when available)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "`sdpa`, `eager` or `flash_attention_2`."})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = torch's default)."})
    output: str | None = field(
        default=None,
        metadata={
            "help": "JSON results (default bench.json; with --report only if given); the markdown tables and "
            "plots go beside it (.md, .png)."
        },
    )
    doc: str | None = field(
        default=None, metadata={"help": "Also write this full report (e.g. docs/benchmarks.md) from the results."}
    )
    report: str | None = field(
        default=None,
        metadata={"help": "Comma-separated JSON files of earlier runs: merge them and write the outputs, run nothing."},
    )
    profile: bool = field(
        default=False, metadata={"help": "Profile unpruned vs pruned language-model prefill (torch.profiler)."}
    )
    profile_method: str | None = field(
        default=None, metadata={"help": "Method of the profiled pruned prefill (default: the first of --methods)."}
    )
    profile_budget: str = field(
        default="0.2",
        metadata={"help": "Comma-separated budgets of the profiled pruned prefill; FLOPs are counted at the first."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random weights and inputs."})


# --------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """A benchmark model: published widths, an input of realistic size, and where its parts live.

    make_config: (layers, vision_layers) -> config with that depth and the published widths.
    make_inputs: (config, text_tokens, generator) -> inputs of a batch of one, as the stock processor lays them out.
    vision_modules: submodules of `model.model` whose forwards together are vision encoding (tower + projector).
    vision_blocks: path under `model.model` of the vision tower's list of blocks.
    block_kinds: vision config -> kind of every vision block; kinds are extrapolated separately.
    """

    name: str
    description: str
    source: str
    model_cls: type[PreTrainedModel]
    make_config: Callable[[int, int], PretrainedConfig]
    make_inputs: Callable[[PretrainedConfig, int, torch.Generator], dict[str, torch.Tensor]]
    full_layers: int
    full_vision_layers: int
    vision_modules: tuple[str, ...]
    vision_blocks: str
    block_kinds: Callable[[PretrainedConfig], list[str]] = lambda vision_config: (
        ["block"] * _vision_depth(vision_config)
    )


def _vision_depth(vision_config: PretrainedConfig) -> int:
    return getattr(vision_config, "depth", None) or vision_config.num_hidden_layers


def _qwen_block_kinds(vision_config: PretrainedConfig) -> list[str]:
    full_attention = set(vision_config.fullatt_block_indexes)
    return ["full_attention" if i in full_attention else "window" for i in range(vision_config.depth)]


def _prompt(text_ids: list[int], visual_block: list[int]) -> torch.Tensor:
    """A chat-like prompt: a third of the text before the image block (system turn), the rest after it."""
    split = len(text_ids) // 3
    return torch.tensor([text_ids[:split] + visual_block + text_ids[split:]])


def _text_ids(count: int, token_range: tuple[int, int], generator: torch.Generator) -> list[int]:
    return torch.randint(*token_range, (count,), generator=generator).tolist()


def _qwen2_5_vl_inputs(image_patches: tuple[int, int], token_range: tuple[int, int]):
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


def _llava_inputs(token_range: tuple[int, int]):
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


def _llava_next_inputs(image_hw: tuple[int, int], token_range: tuple[int, int]):
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


def _internvl_inputs(tiles: int, start_end_ids: tuple[int, int], token_range: tuple[int, int]):
    def make(config, text_tokens, generator):
        vision = config.vision_config
        height, width = vision.image_size
        per_tile = int((height // vision.patch_size[0]) * (width // vision.patch_size[1]) * config.downsample_ratio**2)
        block = [start_end_ids[0]] + [config.image_token_id] * (tiles * per_tile) + [start_end_ids[1]]
        input_ids = _prompt(_text_ids(text_tokens - 2, token_range, generator), block)
        pixel_values = torch.randn(tiles, 3, height, width, generator=generator)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "pixel_values": pixel_values}

    return make


def _qwen_full_attention(vision_layers: int, published: tuple[int, ...]) -> list[int]:
    """The published full-attention blocks that fit, else the last block: a reduced tower keeps both block kinds."""
    return [index for index in published if index < vision_layers] or [vision_layers - 1]


# Qwen2.5-VL-7B-Instruct config.json: LLM 3584 / 18944 / 28 layers / 28 heads, 4 KV heads, vocab 152064, rope
# theta 1e6, M-RoPE sections 16/24/24; ViT depth 32, width 1280, MLP 3420, 16 heads, patch 14, 2 x 2 merge,
# window 112 px, full attention in blocks 7/15/23/31, merger to 3584 (paper 000 Sec. 4.2 uses this model).
def _qwen2_5_vl_7b_config(layers: int, vision_layers: int) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=152064,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=vision_layers,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            out_hidden_size=3584,
            tokens_per_second=2,
            fullatt_block_indexes=_qwen_full_attention(vision_layers, (7, 15, 23, 31)),
        ),
        image_token_id=151655,
        video_token_id=151656,
        vision_start_token_id=151652,
        vision_end_token_id=151653,
        tie_word_embeddings=False,
    )


# LLaVA-1.5-7B (llava-hf/llava-1.5-7b-hf): Vicuna-7B = Llama-7B 4096 / 11008 / 32 layers / 32 heads (no GQA),
# vocab 32064; CLIP ViT-L/14-336: 1024 / 4096 / 24 layers / 16 heads, 576 tokens from layer -2; MLP projector.
_VICUNA_7B = dict(
    model_type="llama",
    vocab_size=32064,
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
_CLIP_VIT_L_336 = dict(
    model_type="clip_vision_model",
    hidden_size=1024,
    intermediate_size=4096,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)


def _llava_1_5_7b_config(layers: int, vision_layers: int) -> LlavaConfig:
    return LlavaConfig(
        text_config=dict(_VICUNA_7B, num_hidden_layers=layers),
        vision_config=dict(_CLIP_VIT_L_336, num_hidden_layers=vision_layers),
        image_token_index=32000,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


# LLaVA-NeXT-7B (llava-hf/llava-v1.6-vicuna-7b-hf): the LLaVA-1.5 towers with anyres tiling over these pinpoints;
# a 672 x 672 image is a base view + 2 x 2 crops = 5 x 576 tokens + 48 row newlines = 2,928 tokens
# (papers 001/002 quote 2,880 = 5 x 576, without the newline tokens).
def _llava_next_7b_config(layers: int, vision_layers: int) -> LlavaNextConfig:
    return LlavaNextConfig(
        text_config=dict(_VICUNA_7B, num_hidden_layers=layers),
        vision_config=dict(_CLIP_VIT_L_336, num_hidden_layers=vision_layers),
        image_token_index=32000,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


# InternVL3-8B (OpenGVLab/InternVL3-8B-hf): InternViT-300M-448px (1024 / 4096 / 24 layers / 16 heads, patch 14,
# 448 px tiles, 2 x 2 pixel shuffle -> 256 tokens per tile) + Qwen2.5-7B (3584 / 18944 / 28 layers / 28 heads,
# 4 KV heads, vocab 151674, qkv bias); <img> 151665, </img> 151666, <IMG_CONTEXT> 151667.
def _internvl3_8b_config(layers: int, vision_layers: int) -> InternVLConfig:
    return InternVLConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=151674,
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=layers,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=[448, 448],
            patch_size=[14, 14],
            attention_bias=True,
        ),
        image_token_id=151667,
        image_seq_length=256,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


# Tiny presets: the test suite's models (hf_tokenprune.testing, hidden size 32) at full depth 4 / 4, for tests.
def _tiny_text(layers: int, model_type: str | None = None) -> dict[str, Any]:
    text = dict(testing.TEXT_CONFIG, num_hidden_layers=layers)
    return text if model_type is None else dict(text, model_type=model_type)


def _tiny_qwen2_5_vl_config(layers: int, vision_layers: int) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            _tiny_text(layers),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
        ),
        vision_config=dict(
            depth=vision_layers,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            patch_size=2,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=8,
            out_hidden_size=32,
            fullatt_block_indexes=_qwen_full_attention(vision_layers, (1, 3)),
        ),
        image_token_id=testing.IMAGE_ID,
        video_token_id=testing.VIDEO_ID,
        vision_start_token_id=testing.VSTART,
        vision_end_token_id=testing.VEND,
    )


def _tiny_llava_config(layers: int, vision_layers: int) -> LlavaConfig:
    return LlavaConfig(
        text_config=_tiny_text(layers, "llama"),
        vision_config=dict(testing.CLIP_VISION_CONFIG, num_hidden_layers=vision_layers),
        image_token_index=testing.IMAGE_ID,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _tiny_llava_next_config(layers: int, vision_layers: int) -> LlavaNextConfig:
    return LlavaNextConfig(
        text_config=_tiny_text(layers, "llama"),
        vision_config=dict(testing.CLIP_VISION_CONFIG, num_hidden_layers=vision_layers),
        image_token_index=testing.IMAGE_ID,
        image_grid_pinpoints=[[8, 8], [8, 16], [16, 8], [16, 16]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _tiny_internvl_config(layers: int, vision_layers: int) -> InternVLConfig:
    return InternVLConfig(
        text_config=_tiny_text(layers, "qwen2"),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=vision_layers,
            num_attention_heads=2,
            image_size=[8, 8],
            patch_size=[2, 2],
        ),
        image_token_id=testing.IMAGE_ID,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )


_QWEN_TOKENS = (1000, 150000)
_LLAMA_TOKENS = (1000, 31000)
_TINY_TOKENS = (testing.TEXT_TOKENS.start, testing.TEXT_TOKENS.stop)
_CLIP_PARTS = dict(
    vision_modules=("vision_tower", "multi_modal_projector"), vision_blocks="vision_tower.encoder.layers"
)
_INTERNVL_PARTS = dict(
    vision_modules=("vision_tower", "multi_modal_projector"), vision_blocks="vision_tower.encoder.layer"
)
_QWEN_PARTS = dict(vision_modules=("visual",), vision_blocks="visual.blocks", block_kinds=_qwen_block_kinds)

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "qwen2.5-vl-7b",
            "Qwen2.5-VL-7B widths; one 896 x 896 image = 64 x 64 patches = 1,024 visual tokens",
            "Qwen/Qwen2.5-VL-7B-Instruct config.json; paper 000 Sec. 4.2",
            Qwen2_5_VLForConditionalGeneration,
            _qwen2_5_vl_7b_config,
            _qwen2_5_vl_inputs((64, 64), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=32,
            **_QWEN_PARTS,
        ),
        Preset(
            "llava-1.5-7b",
            "LLaVA-1.5-7B widths; one 336 x 336 image = 576 visual tokens",
            "llava-hf/llava-1.5-7b-hf config.json; papers 002/004 (N = 576)",
            LlavaForConditionalGeneration,
            _llava_1_5_7b_config,
            _llava_inputs(_LLAMA_TOKENS),
            full_layers=32,
            full_vision_layers=24,
            **_CLIP_PARTS,
        ),
        Preset(
            "llava-next-7b",
            "LLaVA-NeXT-7B widths; one 672 x 672 image = base + 2 x 2 crops = 2,928 visual tokens (with row newlines)",
            "llava-hf/llava-v1.6-vicuna-7b-hf config.json; papers 001/002 (N = 2,880 without newlines)",
            LlavaNextForConditionalGeneration,
            _llava_next_7b_config,
            _llava_next_inputs((672, 672), _LLAMA_TOKENS),
            full_layers=32,
            full_vision_layers=24,
            **_CLIP_PARTS,
        ),
        Preset(
            "internvl3-8b",
            "InternVL3-8B widths; one image as 4 tiles + thumbnail of 448 px = 5 x 256 = 1,280 visual tokens",
            "OpenGVLab/InternVL3-8B-hf config.json (InternViT-300M-448px + Qwen2.5-7B)",
            InternVLForConditionalGeneration,
            _internvl3_8b_config,
            _internvl_inputs(5, (151665, 151666), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=24,
            **_INTERNVL_PARTS,
        ),
        Preset(
            "tiny-qwen2.5-vl",
            "tiny random Qwen2.5-VL (hidden 32), one 16 x 16-patch image = 64 visual tokens",
            "hf_tokenprune.testing",
            Qwen2_5_VLForConditionalGeneration,
            _tiny_qwen2_5_vl_config,
            _qwen2_5_vl_inputs((16, 16), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_QWEN_PARTS,
        ),
        Preset(
            "tiny-llava",
            "tiny random LLaVA (hidden 32), 16 visual tokens",
            "hf_tokenprune.testing",
            LlavaForConditionalGeneration,
            _tiny_llava_config,
            _llava_inputs(_TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_CLIP_PARTS,
        ),
        Preset(
            "tiny-llava-next",
            "tiny random LLaVA-NeXT (hidden 32), one 16 x 16 px anyres image",
            "hf_tokenprune.testing",
            LlavaNextForConditionalGeneration,
            _tiny_llava_next_config,
            _llava_next_inputs((16, 16), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_CLIP_PARTS,
        ),
        Preset(
            "tiny-internvl",
            "tiny random InternVL (hidden 32), one image of 3 tiles = 12 visual tokens",
            "hf_tokenprune.testing",
            InternVLForConditionalGeneration,
            _tiny_internvl_config,
            _internvl_inputs(3, (testing.VSTART, testing.VEND), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_INTERNVL_PARTS,
        ),
    )
}


# --------------------------------------------------------------------------------------------- FLOPs model
def prefill_flops(num_tokens: int, hidden_size: int, intermediate_size: int, num_layers: int) -> int:
    """Language-model prefill FLOPs of paper 001, Sec. 5.3: (4 n d^2 + 2 n^2 d + 2 n d m) l.

    n tokens, hidden size d, FFN intermediate size m, l layers. 4nd^2 is the Q/K/V/O projections, 2n^2d the
    attention scores and weighted sum, 2ndm the FFN; every term counts one multiply-add as one FLOP, as the
    paper (after FastV) does, so only ratios of this number are meaningful. The paper applies it to the
    visual tokens alone; the benchmark applies it to the whole prefill sequence (text + kept visual tokens),
    since text tokens are prefilled too.
    """
    n, d, m = num_tokens, hidden_size, intermediate_size
    return (4 * n * d * d + 2 * n * n * d + 2 * n * d * m) * num_layers


def ideal_prefill_ratio(text_tokens: int, visual_tokens: int, kept_tokens: int, config: PretrainedConfig) -> float:
    """FLOPs(unpruned prefill) / FLOPs(pruned prefill): the speed-up pruning cannot beat."""
    text = config.get_text_config()
    widths = (text.hidden_size, text.intermediate_size, text.num_hidden_layers)
    return prefill_flops(text_tokens + visual_tokens, *widths) / prefill_flops(text_tokens + kept_tokens, *widths)


def predicted_kv_cache_bytes(config: PretrainedConfig, sequence_tokens: int, dtype: torch.dtype) -> int:
    """2 (keys, values) x layers x KV heads x head dim x tokens x bytes per element."""
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = text.num_key_value_heads or text.num_attention_heads
    bytes_per_element = torch.empty((), dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * kv_heads * head_dim * sequence_tokens * bytes_per_element


def extrapolate_full_depth(
    measured_ms: float, block_ms: dict[str, list[float]], full_block_counts: dict[str, int]
) -> float:
    """Full-depth time of a stack from one run of a shallower copy.

    The part outside the blocks (embeddings, rotary tables, masks, final norm, projector) is kept as measured;
    each block kind is charged its mean measured time per block times its count at full depth. With every
    block present it returns `measured_ms` unchanged.
    """
    fixed = measured_ms - sum(sum(times) for times in block_ms.values())
    return fixed + sum(count * statistics.fmean(block_ms[kind]) for kind, count in full_block_counts.items() if count)


# --------------------------------------------------------------------------------------------- timing
class Clock:
    """Marks on one timeline: `time.perf_counter` on CPU, CUDA events on CUDA (read after one synchronize)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class FlopClock:
    """A clock whose marks are the FLOPs a `FlopCounterMode` has counted so far: spans measure FLOPs, not time."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def mark(self) -> int:
        return self.counter.get_total_flops()

    def ms(self, start: int, end: int) -> float:
        return float(end - start)

    def synchronize(self) -> None:
        pass


@dataclass
class Span:
    kind: str  # vision | vision_block | selection | llm | llm_layer
    index: int  # block index within its stack
    call: int  # language-model call (0 = prefill, then one per decode step) that was running or last started
    start: Any
    end: Any


class PipelineProbe:
    """Forward hooks on the stock vision modules, language model and every block, and a timed `select` wrapper.

    Hooks go on the base model's submodules, which every pruned model made from it shares.
    """

    def __init__(self, model: PreTrainedModel, preset: Preset, clock: Clock) -> None:
        self.clock, self.spans, self.handles, self.llm_calls = clock, [], [], 0
        self.llm_starts: list[Any] = []
        self.selectors: list[nn.Module] = []
        inner = model.model
        for name in preset.vision_modules:
            self._watch(inner.get_submodule(name), "vision")
        for index, block in enumerate(inner.get_submodule(preset.vision_blocks)):
            self._watch(block, "vision_block", index)
        language_model = inner.language_model
        self._watch(language_model, "llm")
        for index, layer in enumerate(language_model.layers):
            self._watch(layer, "llm_layer", index)

    def _watch(self, module: nn.Module, kind: str, index: int = 0) -> None:
        starts: list[Any] = []

        def before(_module, _args):
            if kind == "llm":
                self.llm_calls += 1
                self.llm_starts.append(self.clock.mark())
                starts.append(self.llm_starts[-1])
            else:
                starts.append(self.clock.mark())

        def after(_module, _args, _output):
            self.spans.append(Span(kind, index, self.llm_calls - 1, starts.pop(), self.clock.mark()))

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def time_selector(self, selector: nn.Module) -> None:
        """Wrap `selector.select` through an instance attribute (replacing another probe's wrapper)."""
        select = selector.__dict__.setdefault("_unprobed_select", selector.select)

        def timed_select(*args, **kwargs):
            start = self.clock.mark()
            keep_indices = select(*args, **kwargs)
            self.spans.append(Span("selection", 0, self.llm_calls - 1, start, self.clock.mark()))
            return keep_indices

        selector.select = timed_select
        self.selectors.append(selector)

    def reset(self) -> None:
        self.spans, self.llm_calls, self.llm_starts = [], 0, []

    def total(self, kind: str, call: int | None = None) -> float:
        return sum(self.clock.ms(s.start, s.end) for s in self.spans if s.kind == kind and call in (None, s.call))

    def blocks(self, kind: str, call: int | None = None) -> list[tuple[int, float]]:
        return [
            (s.index, self.clock.ms(s.start, s.end)) for s in self.spans if s.kind == kind and call in (None, s.call)
        ]

    def remove(self) -> None:
        """Remove the hooks and restore every wrapped `select`."""
        for handle in self.handles:
            handle.remove()
        for selector in self.selectors:
            selector.__dict__.pop("select", None)
            selector.__dict__.pop("_unprobed_select", None)
        self.handles, self.selectors = [], []


class PeakMemory:
    """Peak memory during a block: CUDA `max_memory_allocated`, or on CPU the process RSS sampled every 2 ms (psutil)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_memory_allocated" if self.cuda else "cpu_process_rss_peak"
        self.start = self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        process, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = process.memory_info().rss

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()


def cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes of every key and value tensor, sequence length) of a `transformers` cache."""
    layers = getattr(cache, "layers", None)
    pairs = [(layer.keys, layer.values) for layer in layers] if layers is not None else list(cache)
    total = sum(t.numel() * t.element_size() for pair in pairs for t in pair if t is not None)
    return total, pairs[0][0].shape[-2]


# --------------------------------------------------------------------------------------------- validation
def _split(value: str, flag: str) -> list[str]:
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`{flag}` is empty; give a comma-separated list")
    return items


def parse_budgets(value: str, flag: str = "--budgets") -> list[float]:
    budgets = []
    for item in _split(value, flag):
        try:
            budget = float(item)
        except ValueError:
            raise ValueError(f"`{flag}`: {item!r} is not a number; each budget is a float in (0, 1]") from None
        if math.isnan(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"`{flag}`: {item} is outside (0, 1] (a fraction of each image's tokens)")
        budgets.append(budget)
    return budgets


def parse_methods(value: str) -> list[str]:
    methods = _split(value, "--methods")
    known = available_selectors()
    for method in methods:
        if method not in known:
            raise ValueError(f"`--methods`: unknown method {method!r}; registered selectors: {known}")
    return methods


def parse_presets(value: str) -> list[Preset]:
    names = _split(value, "--preset")
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"`--preset`: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return [PRESETS[name] for name in names]


def _depth(requested: int, full: int, flag: str, preset: Preset) -> int:
    if not 0 <= requested <= full:
        raise ValueError(f"`{flag}` must be in [0, {full}] for {preset.name} (0 = full depth), got {requested}")
    return requested or full


def check_arguments(args: BenchArguments) -> dict[str, Any]:
    """Validate every flag before any model is built; returns the parsed values."""
    if args.report is not None:
        files = [Path(path) for path in _split(args.report, "--report")]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise ValueError(f"`--report`: no such file(s): {missing}")
        return {"report": files}
    presets, methods, budgets = parse_presets(args.preset), parse_methods(args.methods), parse_budgets(args.budgets)
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise ValueError(f"`--warmup` must be >= 0, got {args.warmup}")
    if args.decode_tokens != 0 and args.decode_tokens < 3:
        raise ValueError(f"`--decode-tokens` must be 0 (skip) or >= 3, got {args.decode_tokens}")
    if args.threads < 0:
        raise ValueError(f"`--threads` must be >= 0 (0 = torch's default), got {args.threads}")
    if args.text_tokens < 8:
        raise ValueError(f"`--text-tokens` must be >= 8, got {args.text_tokens}")
    if args.dtype not in DTYPES:
        raise ValueError(f"`--dtype` must be one of {sorted(DTYPES)}, got {args.dtype!r}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"`--device` must be `auto`, `cpu` or `cuda`, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`--device cuda` was given but CUDA is not available")
    if args.profile:
        if args.profile_method is not None:
            parse_methods(args.profile_method)
        parse_budgets(args.profile_budget, "--profile-budget")
    depths = {}
    for preset in presets:
        layers = _depth(args.layers, preset.full_layers, "--layers", preset)
        vision_layers = _depth(args.vision_layers, preset.full_vision_layers, "--vision-layers", preset)
        reduced = preset.block_kinds(preset.make_config(layers, vision_layers).vision_config)
        full = preset.block_kinds(preset.make_config(1, preset.full_vision_layers).vision_config)
        if not set(full) <= set(reduced):
            raise ValueError(
                f"`--vision-layers` {vision_layers} is too shallow for {preset.name}: every block kind of the full "
                f"tower ({sorted(set(full))}) must be measured to extrapolate; use at least {len(set(full))}"
            )
        depths[preset.name] = (layers, vision_layers)
    device_name = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    return {"presets": presets, "methods": methods, "budgets": budgets, "depths": depths, "device": device}


# --------------------------------------------------------------------------------------------- running
def build_model(
    preset: Preset, layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device, attn: str, seed: int
) -> PreTrainedModel:
    """The preset's stock model class with random weights (its own `_init_weights`), in `dtype` on `device`."""
    config = preset.make_config(layers, vision_layers)
    torch.manual_seed(seed)
    with torch.device(device):
        model = preset.model_cls._from_config(config, dtype=dtype, attn_implementation=attn)
    model.eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # a fixed number of new tokens
    model.generation_config.do_sample = False
    return model


@dataclass
class Configuration:
    """One row of the table: `method` None is the unpruned base model."""

    method: str | None
    budget: float | None
    model: PreTrainedModel
    timings: list[dict[str, Any]] = field(default_factory=list)
    kept_tokens: int = 0
    kv_bytes: tuple[int, int] = (0, 0)
    decode: dict[str, Any] = field(default_factory=dict)

    def generate_kwargs(self) -> dict[str, Any]:
        return {} if self.method is None else {"prune_budget": self.budget}


@dataclass
class DepthMap:
    """How the built model's stacks map to the full-depth model.

    built_kinds: kind of every vision block as built; full_counts: vision blocks per kind at full depth.
    """

    built_kinds: list[str]
    full_counts: dict[str, int]
    full_layers: int

    def full_depth(self, timing: dict[str, Any]) -> dict[str, float]:
        """One measurement at the built depth -> vision / selection / prefill / other / TTFT at full depth."""
        blocks_by_kind: dict[str, list[float]] = {}
        for index, value in timing["vision_blocks"].items():
            blocks_by_kind.setdefault(self.built_kinds[index], []).append(value)
        vision = extrapolate_full_depth(timing["vision_ms"], blocks_by_kind, self.full_counts)
        prefill = extrapolate_full_depth(
            timing["prefill_ms"], {"layer": timing["llm_layers"]}, {"layer": self.full_layers}
        )
        ttft = timing["ttft_ms"] - timing["vision_ms"] - timing["prefill_ms"] + vision + prefill
        return {
            "vision_ms": vision,
            "selection_ms": timing["selection_ms"],
            "prefill_ms": prefill,
            "other_ms": ttft - vision - timing["selection_ms"] - prefill,
            "ttft_ms": ttft,
        }


def measure_ttft(config: Configuration, inputs, probe: PipelineProbe, keep: bool) -> dict[str, Any]:
    """One `generate(max_new_tokens=1)`, split by the probe's spans (at the built depth, in the probe clock's unit)."""
    clock = probe.clock
    probe.reset()
    clock.synchronize()
    start = clock.mark()
    output = config.model.generate(**inputs, **config.generate_kwargs(), max_new_tokens=1, return_dict_in_generate=True)
    end = clock.mark()
    clock.synchronize()
    if keep:
        visual = _visual_mask(config.model, inputs["input_ids"])
        keep_mask = output.get("keep_mask")
        config.kept_tokens = int(visual.sum()) if keep_mask is None else int(keep_mask[visual].sum())
        config.kv_bytes = cache_bytes(output.past_key_values)
    vision_blocks: dict[int, float] = {}
    for index, value in probe.blocks("vision_block"):
        vision_blocks[index] = vision_blocks.get(index, 0.0) + value
    return {
        "ttft_ms": clock.ms(start, end),
        "vision_ms": probe.total("vision"),
        "selection_ms": probe.total("selection"),
        "prefill_ms": probe.total("llm", call=0),
        "llm_layers": [value for _, value in probe.blocks("llm_layer", call=0)],
        "vision_blocks": vision_blocks,
    }


def measure_decode(config: Configuration, inputs, probe: PipelineProbe, tokens: int, device) -> dict[str, Any]:
    """A `generate(max_new_tokens=tokens)`: step times between consecutive language-model calls, and peak memory."""
    clock = probe.clock
    probe.reset()
    with PeakMemory(device) as memory:
        config.model.generate(**inputs, **config.generate_kwargs(), max_new_tokens=tokens, min_new_tokens=tokens)
    clock.synchronize()
    steps = []
    for call in range(1, len(probe.llm_starts) - 1):  # call k starts decode step k; the next call's start ends it
        step_ms = clock.ms(probe.llm_starts[call], probe.llm_starts[call + 1])
        steps.append((step_ms, statistics.fmean(value for _, value in probe.blocks("llm_layer", call=call))))
    return {
        "steps": steps,
        "peak_memory_bytes": memory.peak,
        "peak_memory_delta_bytes": memory.peak - memory.start,
        "peak_memory_kind": memory.kind,
    }


def _visual_mask(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    return input_ids == model.config.image_token_id


def _median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run_preset(
    preset: Preset,
    methods: list[str],
    budgets: list[float],
    layers: int,
    vision_layers: int,
    args: BenchArguments,
    device: torch.device,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the preset, time every configuration round-robin, and return (run record, rows)."""
    from tqdm.auto import tqdm

    dtype = DTYPES[args.dtype]
    load_start = _load_average()
    started = time.perf_counter()
    base = build_model(preset, layers, vision_layers, dtype, device, args.attn_implementation, args.seed)
    build_seconds = time.perf_counter() - started
    inputs = preset.make_inputs(base.config, args.text_tokens, torch.Generator().manual_seed(args.seed))
    inputs = {
        name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for name, value in inputs.items()
    }
    probe = PipelineProbe(base, preset, Clock(device))
    configurations = [Configuration(None, None, base)]
    for method in methods:
        pruned = get_pruned_model(base, TokenPruneConfig(method=method))
        for budget in budgets:
            probe.time_selector(_selector(pruned, budget))
            configurations.append(Configuration(method, budget, pruned))

    rounds = ["warmup"] * args.warmup + ["timed"] * args.repeats
    progress = tqdm(total=len(rounds) * len(configurations), desc=f"bench {preset.name}", unit="run")
    # Round-robin (every configuration once per round) so drifting machine load hits every row alike.
    for round_index, phase in enumerate(rounds):
        for config in configurations:
            timing = measure_ttft(config, inputs, probe, keep=round_index == args.warmup)
            if phase == "timed":
                config.timings.append(timing)
            progress.update()
    progress.close()
    if args.decode_tokens:
        for config in tqdm(configurations, desc=f"decode {preset.name}", unit="run"):
            config.decode = measure_decode(config, inputs, probe, args.decode_tokens, device)
    probe.remove()

    full_config = preset.make_config(preset.full_layers, preset.full_vision_layers)
    full_kinds = preset.block_kinds(full_config.vision_config)
    depth = DepthMap(
        preset.block_kinds(base.config.vision_config),
        {kind: full_kinds.count(kind) for kind in set(full_kinds)},
        preset.full_layers,
    )
    rows = _rows(preset, configurations, depth, base, full_config, inputs, args)
    run = {
        "preset": preset.name,
        "description": preset.description,
        "source": preset.source,
        "methods": methods,
        "budgets": budgets,
        "settings": {
            key: getattr(args, key)
            for key in (
                "layers",
                "vision_layers",
                "repeats",
                "warmup",
                "decode_tokens",
                "text_tokens",
                "dtype",
                "attn_implementation",
                "seed",
            )
        },
        "widths": _widths(full_config),
        "machine": machine_info(device) | {"load_average_start": load_start, "load_average_end": _load_average()},
        "build_seconds": build_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    if args.profile:
        run["profile"] = profile_prefill(
            preset,
            base,
            args.profile_method or methods[0],
            parse_budgets(args.profile_budget, "--profile-budget"),
            methods,
            inputs,
            depth,
        )
        run["profile"]["layers"] = layers
    return run, rows


def _selector(model: PreTrainedModel, budget: float) -> nn.Module:
    # `resolve_pruning` returns the selector instance `generate` will call (attached or transient).
    return model.resolve_pruning(budget, None)[1]


def _rows(preset, configurations, depth: DepthMap, base, full_config, inputs, args) -> list[dict[str, Any]]:
    dtype = DTYPES[args.dtype]
    layers = base.config.get_text_config().num_hidden_layers
    vision_layers = _vision_depth(base.config.vision_config)
    visual_tokens = int(_visual_mask(base, inputs["input_ids"]).sum())
    text_tokens = inputs["input_ids"].shape[1] - visual_tokens
    rows, unpruned = [], None
    for config in configurations:
        per_repeat = [depth.full_depth(timing) for timing in config.timings]
        summary = {name: _median_min_max([r[name] for r in per_repeat]) for name in per_repeat[0]}
        unpruned = unpruned or summary
        measured = {
            name: statistics.median(t[name] for t in config.timings)
            for name in ("ttft_ms", "vision_ms", "selection_ms", "prefill_ms")
        }
        measured["prefill_layer_ms"] = statistics.median(statistics.fmean(t["llm_layers"]) for t in config.timings)
        measured["prefill_outside_layers_ms"] = statistics.median(
            t["prefill_ms"] - sum(t["llm_layers"]) for t in config.timings
        )
        kept = config.kept_tokens
        kv_bytes, kv_tokens = config.kv_bytes
        row = {
            "preset": preset.name,
            "method": config.method or "unpruned",
            "budget": config.budget if config.budget is not None else 1.0,
            "visual_tokens": visual_tokens,
            "text_tokens": text_tokens,
            "kept_tokens": kept,
            **{name: values[0] for name, values in summary.items()},
            "ideal_prefill_ratio": ideal_prefill_ratio(text_tokens, visual_tokens, kept, base.config),
            "ideal_prefill_ratio_visual_only": ideal_prefill_ratio(0, visual_tokens, kept, base.config),
            "measured_prefill_ratio": unpruned["prefill_ms"][0] / summary["prefill_ms"][0],
            "ttft_speedup": unpruned["ttft_ms"][0] / summary["ttft_ms"][0],
            "kv_cache_bytes": kv_bytes,
            "kv_cache_tokens": kv_tokens,
            "kv_cache_bytes_predicted": predicted_kv_cache_bytes(base.config, text_tokens + kept, dtype),
            "kv_cache_bytes_full_depth": kv_bytes // layers * preset.full_layers,
            "kv_cache_bytes_predicted_full_depth": predicted_kv_cache_bytes(full_config, text_tokens + kept, dtype),
            "extrapolated": layers < preset.full_layers or vision_layers < preset.full_vision_layers,
            "layers": layers,
            "full_layers": preset.full_layers,
            "vision_layers": vision_layers,
            "full_vision_layers": preset.full_vision_layers,
            "repeats": len(config.timings),
            "spread": {name: [values[1], values[2]] for name, values in summary.items()},
            "measured": measured,
        }
        row["measured_over_ideal"] = row["measured_prefill_ratio"] / row["ideal_prefill_ratio"]
        row["selection_share_of_ttft"] = row["selection_ms"] / row["ttft_ms"]
        if config.decode:
            steps = config.decode["steps"]
            row["decode_tokens_per_s"] = 1e3 / statistics.median(
                step + (preset.full_layers - layers) * layer for step, layer in steps
            )
            row["measured"]["decode_step_ms"] = statistics.median(step for step, _ in steps)
            for key in ("peak_memory_bytes", "peak_memory_delta_bytes", "peak_memory_kind"):
                row[key] = config.decode[key]
        rows.append(row)
    return rows


def _widths(config: PretrainedConfig) -> dict[str, Any]:
    text, vision = config.get_text_config(), config.vision_config
    return {
        "llm_hidden_size": text.hidden_size,
        "llm_intermediate_size": text.intermediate_size,
        "llm_layers": text.num_hidden_layers,
        "llm_heads": text.num_attention_heads,
        "llm_kv_heads": text.num_key_value_heads,
        "vocab_size": text.vocab_size,
        "vision_hidden_size": vision.hidden_size,
        "vision_intermediate_size": vision.intermediate_size,
        "vision_layers": _vision_depth(vision),
    }


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------------------------- profile
OP_CATEGORIES = (
    ("GEMM (linear / matmul)", ("mm", "linear", "matmul", "gemm")),
    ("attention kernel", ("scaled_dot_product", "flash_attention", "softmax", "attention")),
    ("copies / layout", ("copy", "contiguous", "cat", "clone", "index", "gather", "expand", "transpose")),
    ("elementwise / norm", ("add", "mul", "pow", "mean", "rsqrt", "silu", "neg", "div", "sigmoid", "norm", "exp")),
)


def op_category(name: str) -> str:
    short = name.removeprefix("aten::").lower()
    return next((category for category, needles in OP_CATEGORIES if any(n in short for n in needles)), "other")


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no formula for the CPU flash-attention kernel: QK^T and AV, 2 FLOPs per multiply-add."""
    batch, heads, query_length, head_dim = query
    return 2 * 2 * batch * heads * query_length * key[-2] * head_dim


def flop_counter():
    """A `FlopCounterMode` that also counts the CPU flash-attention kernel."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _attention_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(config: Configuration, inputs, preset: Preset, depth: DepthMap) -> dict[str, float]:
    """Counted FLOPs of one `generate(max_new_tokens=1)`, split like the timings and extrapolated to full depth."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder-layer kernel is invisible to the counter
    try:
        with torch.no_grad(), flop_counter() as counter:
            probe = PipelineProbe(config.model, preset, FlopClock(counter))
            if config.method is not None:
                probe.time_selector(_selector(config.model, config.budget))
            try:
                flops = depth.full_depth(measure_ttft(config, inputs, probe, keep=False))
            finally:
                probe.remove()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return {name.removesuffix("_ms"): value for name, value in flops.items()}


def profile_prefill(preset, base, method, budgets, methods, inputs, depth: DepthMap) -> dict[str, Any]:
    """Where the time goes: the language-model prefill replayed under torch.profiler, and counted FLOPs.

    The language model's inputs are captured from the real pipeline (unpruned, and `method` at each of
    `budgets`) and replayed once for warm-up and once under the profiler; per-op self times are kept. Counted
    FLOPs (torch FlopCounterMode, full-depth extrapolated) of the whole TTFT are recorded for the unpruned
    model and every learned method at the first budget, split like the timings.
    """
    budget, *more = budgets
    pruned = get_pruned_model(base, TokenPruneConfig(method=method))
    result: dict[str, Any] = {
        "method": method,
        "budget": budget,
        "runs": {
            "unpruned": _profile_llm_prefill(Configuration(None, None, base), inputs),
            "pruned": _profile_llm_prefill(Configuration(method, budget, pruned), inputs),
        },
        "more": [
            {"budget": other, "pruned": _profile_llm_prefill(Configuration(method, other, pruned), inputs)}
            for other in more
        ],
        "flops": {},
    }
    rows = [result["runs"]["unpruned"]["tokens"], result["runs"]["pruned"]["tokens"]]
    result["gemm"] = gemm_scan(base.model.language_model, rows + [more["pruned"]["tokens"] for more in result["more"]])
    flop_configs = [("unpruned", Configuration(None, None, base))] + [
        (name, Configuration(name, budget, get_pruned_model(base, TokenPruneConfig(method=name))))
        for name in methods
        if name in LEARNED_METHODS
    ]
    for name, config in flop_configs:
        result["flops"][name] = count_flops(config, inputs, preset, depth)
    return result


def gemm_scan(language_model: nn.Module, rows: list[int]) -> dict[str, dict[str, float]]:
    """The first MLP projection of the language model alone, as one GEMM of `rows` tokens: median ms and GFLOP/s.

    Tells a row-count effect of the GEMM kernel apart from anything the pipeline does.
    """
    linear = next(module for module in language_model.layers[0].mlp.modules() if isinstance(module, nn.Linear))
    clock = Clock(linear.weight.device)
    result = {}
    for num_rows in sorted(set(rows)):
        hidden = torch.randn(num_rows, linear.in_features, dtype=linear.weight.dtype, device=linear.weight.device)
        times = []
        with torch.no_grad():
            for attempt in range(7):
                clock.synchronize()
                start = clock.mark()
                linear(hidden)
                end = clock.mark()
                clock.synchronize()
                if attempt >= 2:  # two warm-up calls
                    times.append(clock.ms(start, end))
        ms = statistics.median(times)
        flops = 2 * num_rows * linear.in_features * linear.out_features
        result[str(num_rows)] = {"ms": ms, "gflop_per_s": flops / ms / 1e6}
    return result


def _profile_llm_prefill(config: Configuration, inputs) -> dict[str, Any]:
    """Per-op self times of one language-model prefill, replayed from the inputs the real pipeline passes it."""
    from torch.profiler import ProfilerActivity, profile

    language_model = config.model.model.language_model
    cuda = next(language_model.parameters()).device.type == "cuda"
    captured: dict[str, Any] = {}

    def grab(_module, _args, kwargs):
        captured.update({} if captured else kwargs)

    handle = language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        config.model.generate(**inputs, **config.generate_kwargs(), max_new_tokens=1)
    finally:
        handle.remove()
    captured["past_key_values"] = None  # a fresh cache, as at prefill
    with torch.no_grad():
        language_model(**captured)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            language_model(**captured)
    ops = {}
    for event in prof.key_averages():
        self_us = getattr(event, "self_device_time_total", 0) if cuda else event.self_cpu_time_total
        if self_us > 0:
            ops[event.key] = {"ms": self_us / 1e3, "calls": event.count, "category": op_category(event.key)}
    return {"tokens": int(captured["inputs_embeds"].shape[1]), "ops": ops}


# --------------------------------------------------------------------------------------------- reports
def _ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f}"


TABLE_COLUMNS = (
    "method",
    "budget",
    "kept / visual",
    "vision ms",
    "selection ms",
    "LLM prefill ms",
    "other ms",
    "TTFT ms [min, max]",
    "ideal prefill x",
    "measured prefill x",
    "measured / ideal",
    "TTFT x",
    "decode tok/s",
    "KV MiB (predicted)",
    "peak MiB",
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of one preset as a markdown table (full-depth figures; see `extrapolated`)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        low, high = row["spread"]["ttft_ms"]
        decode = f"{row['decode_tokens_per_s']:.2f}" if "decode_tokens_per_s" in row else "-"
        peak = _mib(row["peak_memory_bytes"]) if "peak_memory_bytes" in row else "-"
        cells = (
            row["method"],
            f"{row['budget']:g}",
            f"{row['kept_tokens']} / {row['visual_tokens']}",
            _ms(row["vision_ms"]),
            _ms(row["selection_ms"]),
            _ms(row["prefill_ms"]),
            _ms(row["other_ms"]),
            f"{_ms(row['ttft_ms'])} [{_ms(low)}, {_ms(high)}]",
            f"{row['ideal_prefill_ratio']:.2f}",
            f"{row['measured_prefill_ratio']:.2f}",
            f"{row['measured_over_ideal']:.2f}",
            f"{row['ttft_speedup']:.2f}",
            decode,
            f"{_mib(row['kv_cache_bytes_full_depth'])} ({_mib(row['kv_cache_bytes_predicted_full_depth'])})",
            peak,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_preset(rows: list[dict[str, Any]], path: Path) -> None:
    """Measured vs ideal prefill speed-up per budget, and the time-to-first-token split per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pruned = [row for row in rows if row["method"] != "unpruned"]
    methods = list(dict.fromkeys(row["method"] for row in pruned))
    budgets = sorted({row["budget"] for row in pruned})
    figure, (speed, split) = plt.subplots(1, 2, figsize=(13, 4.8))
    for method in methods:
        points = sorted((row["budget"], row["measured_prefill_ratio"]) for row in pruned if row["method"] == method)
        speed.plot(*zip(*points, strict=True), marker="o", label=method)
    ideal = sorted({(row["budget"], row["ideal_prefill_ratio"]) for row in pruned})
    speed.plot(*zip(*ideal, strict=True), "k--", linewidth=2, label="FLOPs ideal (paper 001 Sec. 5.3)")
    speed.set(xlabel="budget (fraction of visual tokens kept)", ylabel="LLM prefill speed-up vs unpruned")
    speed.set_title("language-model prefill speed-up")
    speed.legend(fontsize=8)
    speed.grid(alpha=0.3)
    focus = 0.2 if 0.2 in budgets else budgets[len(budgets) // 2]
    shown = [rows[0]] + [row for row in pruned if row["budget"] == focus]
    labels = ["unpruned"] + [row["method"] for row in shown[1:]]
    bottom = [0.0] * len(shown)
    for part in ("vision_ms", "selection_ms", "prefill_ms", "other_ms"):
        heights = [row[part] / 1e3 for row in shown]
        split.bar(labels, heights, bottom=bottom, label=part.removesuffix("_ms"))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    split.set(ylabel="seconds (full depth)", title=f"time to first token at budget {focus:g}")
    split.tick_params(axis="x", rotation=30)
    split.legend(fontsize=8)
    figure.suptitle(
        f"{rows[0].get('run', rows[0]['preset'])}: "
        f"{'extrapolated to full depth from per-layer times' if rows[0]['extrapolated'] else 'measured at full depth'}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def command_line(args: BenchArguments) -> str:
    """The `hf-tokenprune bench` command that reproduces a run."""
    flags = [
        ("preset", args.preset),
        ("methods", args.methods),
        ("budgets", args.budgets),
        ("layers", args.layers),
        ("vision-layers", args.vision_layers),
        ("repeats", args.repeats),
        ("warmup", args.warmup),
        ("decode-tokens", args.decode_tokens),
        ("text-tokens", args.text_tokens),
        ("dtype", args.dtype),
        ("output", args.output or "bench.json"),
    ]
    if args.threads:
        flags.append(("threads", args.threads))
    if args.profile:
        flags += [("profile-method", args.profile_method), ("profile-budget", args.profile_budget)]
    command = "hf-tokenprune bench " + " ".join(f"--{name} {value}" for name, value in flags if value is not None)
    return command + (" --profile" if args.profile else "")


def run_label(run: dict[str, Any]) -> str:
    """`preset, N CPU threads` or `preset, <GPU>`: what tells two runs of one preset apart."""
    machine = run["machine"]
    where = machine.get("gpu") or f"{machine['torch_threads']} CPU thread{'s' if machine['torch_threads'] > 1 else ''}"
    return f"{run['preset']}, {where}"


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def tag_rows(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Set every row's `run` to its run's label (rows of one results file follow their runs, one run per preset)."""
    labels = {run["preset"]: run_label(run) for run in runs}
    for row in rows:
        row["run"] = labels[row["preset"]]


def _by_run(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row.get("run", row["preset"]), []).append(row)
    return grouped


def write_outputs(results: dict[str, Any], output: Path) -> str:
    """JSON at `output`, the markdown tables beside it (.md) and one plot per run (.png, -<run>.png if several)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    sections = []
    grouped = _by_run(results["rows"])
    for label, rows in grouped.items():
        plot = output.with_name(f"{output.stem}.png" if len(grouped) == 1 else f"{output.stem}-{_slug(label)}.png")
        plot_preset(rows, plot)
        sections.append(f"## {label}\n\n{markdown_table(rows)}\n\n![{label}]({plot.name})\n")
    markdown = "\n".join(sections)
    output.with_suffix(".md").write_text(markdown)
    return markdown


DOC_METHOD = """\
## How it is measured

- **Models.** Stock `transformers` classes built from configs with the published widths of each checkpoint
  (the preset's `source`) and random weights: timing depends on shapes, not on weight values. Learned
  selectors are attached with `get_pruned_model(base, TokenPruneConfig(method=...))` at their default sizes,
  so their selection time is that of the real scorer at the real width.
- **What is timed.** `model.generate(**inputs, prune_budget=b, max_new_tokens=1)`, the call users make, end
  to end: that is the time to first token (TTFT). The unpruned row is the stock base model's `generate`.
  Forward hooks on the stock vision modules (tower and projector) and on the language model split it into
  *vision* (encoding + projection), *selection* (the selector's `select`, wrapped through an instance
  attribute), *LLM prefill* (the language-model decoder stack on the kept sequence) and *other* (the rest:
  embedding lookup, placeholder bookkeeping and sequence compaction, M-RoPE indices, LM head on the last
  token, `generate` overhead). On CUDA the marks are CUDA events, on CPU `time.perf_counter`.
- **Repeats.** Every configuration runs `--warmup` untimed times, then `--repeats` timed times,
  round-robin (each configuration once per round) so that drifting machine load hits all rows alike.
  Tables give medians; the JSON `spread` holds [min, max] of every figure.
- **Depth and extrapolation.** Prefill cost is per layer, so the language model and vision tower can be
  built shallower (`--layers`, `--vision-layers`). Hooks time every block; the full-depth time of a stack
  is its measured time outside the blocks plus, per block kind, the mean measured block time times the
  block count at full depth (Qwen2.5-VL's windowed and full-attention vision blocks are separate kinds; a
  reduced tower keeps at least one of each). Rows built shallower carry `"extrapolated": true`; all times
  in the tables are full-depth. Selection is never extrapolated: the scorers run at full size.
- **FLOPs model and ideal ratio.** Paper 001 (Sec. 5.3): FLOPs(n) = (4 n d^2 + 2 n^2 d + 2 n d m) l for n
  tokens, hidden size d, FFN size m, l layers. The paper counts the visual tokens only; here n is the
  whole prefill sequence (text + kept visual tokens), because the text is prefilled too. The ideal
  prefill ratio FLOPs(text + visual) / FLOPs(text + kept) is the speed-up pruning cannot beat; the
  measured ratio is unpruned LLM prefill time / pruned LLM prefill time (full depth, medians);
  measured / ideal is the fraction of the ideal that is realised. (`ideal_prefill_ratio_visual_only` in the
  JSON is the paper's visual-tokens-only version, which no real prompt can reach.)
- **KV cache.** Bytes of every key and value tensor in the `past_key_values` returned after prefill
  (`return_dict_in_generate=True`), compared with 2 x layers x KV heads x head dim x (text + kept) x bytes
  per element; the tables scale both to full depth (every layer holds the same shape).
- **Decode and memory.** A separate `generate` with `--decode-tokens` new tokens: decode speed is the
  median time between the starts of consecutive language-model calls (one decode step each), extrapolated
  to full depth with the per-layer decode time. Peak memory is measured during that call: on CUDA
  `torch.cuda.max_memory_allocated`, on CPU the process resident set size sampled every 2 ms (psutil),
  which includes the weights of the model *as built* (not extrapolated).
"""


def _acceptance(rows: list[dict[str, Any]], budget: float) -> str:
    chosen = [row for row in rows if row["budget"] == budget and row["method"] != "unpruned"]
    if not chosen:
        return ""
    lines = [
        "| method | kept | ideal prefill x | measured prefill x | measured / ideal | selection ms "
        "| selection % of TTFT | KV bytes (built depth) | predicted | KV error |",
        "|" + "---|" * 10,
    ]
    for row in chosen:
        error = row["kv_cache_bytes"] / row["kv_cache_bytes_predicted"] - 1
        lines.append(
            f"| {row['method']} | {row['kept_tokens']} / {row['visual_tokens']} | {row['ideal_prefill_ratio']:.2f} "
            f"| {row['measured_prefill_ratio']:.2f} | {row['measured_over_ideal']:.2f} | {_ms(row['selection_ms'])} "
            f"| {100 * row['selection_share_of_ttft']:.2f}% | {row['kv_cache_bytes']:,} "
            f"| {row['kv_cache_bytes_predicted']:,} | {100 * error:+.2f}% |"
        )
    return "\n".join(lines)


def _machine_line(run: dict[str, Any]) -> str:
    machine, settings = run["machine"], run["settings"]
    device = machine.get("gpu", machine["cpu"])
    return (
        f"{machine['date']}: {device} ({machine['device']}), {machine['logical_cpus']} logical CPUs, "
        f"torch threads: {machine['torch_threads']}, {machine['memory_gib']} GiB RAM, {machine['os']}, "
        f"Python {machine['python']}, torch {machine['torch']}, transformers {machine['transformers']}; "
        f"{settings['dtype']}, `{settings['attn_implementation']}` attention; load average (1/5/15 min) "
        f"{machine['load_average_start']} at the start and {machine['load_average_end']} at the end; "
        f"built {settings['layers']} LLM / {settings['vision_layers']} vision layers "
        f"(full depth {run['widths']['llm_layers']} / {run['widths']['vision_layers']}), "
        f"{settings['repeats']} repeats after {settings['warmup']} warm-up; run took {run['wall_seconds'] / 60:.1f} min."
    )


def profile_section(run: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Where the pruned prefill's time goes relative to the ideal, by op category, from the recorded profile."""
    profile = run["profile"]
    unpruned, pruned = profile["runs"]["unpruned"], profile["runs"]["pruned"]
    widths = run["widths"]
    flops = [
        prefill_flops(r["tokens"], widths["llm_hidden_size"], widths["llm_intermediate_size"], profile["layers"])
        for r in (unpruned, pruned)
    ]
    ideal = flops[0] / flops[1]
    totals = {label: sum(op["ms"] for op in r["ops"].values()) for label, r in profile["runs"].items()}
    categories: dict[str, list[float]] = {}
    for index, run_ops in enumerate((unpruned["ops"], pruned["ops"])):
        for op in run_ops.values():
            categories.setdefault(op["category"], [0.0, 0.0])[index] += op["ms"]
    excess_total = totals["pruned"] - totals["unpruned"] / ideal
    lines = _timing_gap(profile, rows) + [
        f"Profile of the language-model prefill as the pipeline runs it (captured inputs replayed under "
        f"`torch.profiler`, {profile['layers']} layers as built), unpruned ({unpruned['tokens']} tokens) vs "
        f"`{profile['method']}` at budget {profile['budget']:g} ({pruned['tokens']} tokens). Self time of every op, "
        f"summed by category. *Excess* is pruned time minus unpruned time / ideal ratio ({ideal:.2f}): the "
        f"categories' excesses add up to the whole gap to the ideal.",
        "",
        "| category | unpruned ms | pruned ms | time ratio | ideal pruned ms | excess ms | share of gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for category, (u, p) in sorted(categories.items(), key=lambda item: -item[1][0]):
        excess = p - u / ideal
        share = f"{100 * excess / excess_total:.0f}%" if excess_total > 0 else "-"
        ratio = f"{u / p:.2f}" if p > 0 else "-"
        lines.append(f"| {category} | {_ms(u)} | {_ms(p)} | {ratio} | {_ms(u / ideal)} | {excess:+.1f} | {share} |")
    lines.append(
        f"| **total** | {_ms(totals['unpruned'])} | {_ms(totals['pruned'])} | {totals['unpruned'] / totals['pruned']:.2f} "
        f"| {_ms(totals['unpruned'] / ideal)} | {excess_total:+.1f} | 100% |"
    )
    slower = [
        c for c, (u, p) in categories.items() if p > 0 and u / p < ideal and p - u / ideal > 0.01 * totals["pruned"]
    ]
    faster = [
        c for c, (u, p) in categories.items() if p > 0 and u / p > ideal and u / ideal - p > 0.01 * totals["pruned"]
    ]
    lines += [
        "",
        f"Shrinking slower than the FLOPs (time ratio below {ideal:.2f}, each over 1% of the pruned time): "
        f"{', '.join(slower) or 'none'}. Shrinking faster: {', '.join(faster) or 'none'}. A category shrinks slower "
        "when part of its cost does not depend on the number of tokens (per-call overhead, weight reads); faster "
        "when it runs more FLOP/s on the shorter sequence (attention is quadratic in it; activations that fit in "
        "cache make elementwise ops cheaper), which is how a measured ratio can exceed the FLOPs model's.",
    ]
    gemm_u, gemm_p = categories.get("GEMM (linear / matmul)", [0.0, 0.0])
    if gemm_u and gemm_p:
        per_token = (gemm_u / unpruned["tokens"], gemm_p / pruned["tokens"])
        lines += [
            "",
            f"GEMM time per token (GEMM FLOPs are linear in the tokens): {per_token[0]:.2f} ms unpruned, "
            f"{per_token[1]:.2f} ms pruned, so the GEMMs ran at {per_token[0] / per_token[1]:.2f}x the unpruned "
            "throughput on the pruned sequence.",
        ]
    gemm = profile.get("gemm", {})
    if str(unpruned["tokens"]) in gemm and str(pruned["tokens"]) in gemm:
        scan = ", ".join(f"{rows} rows {gemm[rows]['gflop_per_s']:,.0f}" for rows in sorted(gemm, key=int))
        lines += [
            "",
            f"The first MLP projection timed alone as one GEMM (GFLOP/s, median of 5): {scan}. At "
            f"{pruned['tokens']} rows it runs at {gemm[str(pruned['tokens'])]['gflop_per_s'] / gemm[str(unpruned['tokens'])]['gflop_per_s']:.2f}x "
            f"its {unpruned['tokens']}-row throughput: what the GEMM kernel does at this shape, outside the pipeline.",
        ]
    lines += [
        "",
        "Top ops by pruned self time:",
        "",
        "| op | category | unpruned ms | pruned ms | time ratio | calls |",
        "|---|---|---|---|---|---|",
    ]
    for name, op in sorted(pruned["ops"].items(), key=lambda item: -item[1]["ms"])[:12]:
        before = unpruned["ops"].get(name, {"ms": 0.0})["ms"]
        lines.append(
            f"| `{name}` | {op['category']} | {_ms(before)} | {_ms(op['ms'])} | {before / op['ms']:.2f} | {op['calls']} |"
        )
    if profile["flops"]:
        lines += ["", flops_section(profile, rows)]
    return "\n".join(lines)


def _timing_gap(profile: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The measured full-depth gap split into the decoder layers and the part of the language model outside them."""
    pruned = next((r for r in rows if r["method"] == profile["method"] and r["budget"] == profile["budget"]), None)
    if pruned is None:
        return []
    unpruned, full_layers = rows[0], rows[0]["full_layers"]
    u, p = unpruned["measured"], pruned["measured"]
    layer_ratio = u["prefill_layer_ms"] / p["prefill_layer_ms"]
    verdict = (
        "reaches the FLOPs ideal"
        if pruned["measured_over_ideal"] >= 1
        else f"falls {100 * (1 - pruned['measured_over_ideal']):.0f}% short of the FLOPs ideal"
    )
    return [
        f"From the timings: at budget {profile['budget']:g}, `{profile['method']}`'s full-depth LLM prefill speed-up "
        f"is {pruned['measured_prefill_ratio']:.2f}x against an ideal {pruned['ideal_prefill_ratio']:.2f}x "
        f"(medians of {pruned['repeats']} repeats), "
        f"i.e. it {verdict}. Full-depth prefill = part outside the decoder layers + {full_layers} x per-layer time: "
        f"unpruned {_ms(u['prefill_outside_layers_ms'])} + {full_layers} x {_ms(u['prefill_layer_ms'])} ms, pruned "
        f"{_ms(p['prefill_outside_layers_ms'])} + {full_layers} x {_ms(p['prefill_layer_ms'])} ms; the per-layer "
        f"ratio alone is {layer_ratio:.2f}x.",
        "",
    ]


def flops_section(profile: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Counted FLOPs of the whole time to first token (full depth) next to the measured time shares."""
    flops = profile["flops"]
    budget = profile["budget"]
    unpruned = flops["unpruned"]
    lines = [
        f"Counted FLOPs of one time-to-first-token call (torch `FlopCounterMode` over the real `generate`, split "
        f"and extrapolated to full depth like the timings; 2 FLOPs per multiply-add) at budget {budget:g}, and the "
        f"achieved rate of each part: time share follows FLOP share when every part runs equally efficiently.",
        "",
        "| method | vision GFLOP | selection GFLOP | LLM prefill GFLOP | TTFT GFLOP | selection FLOP share "
        "| selection time share | selection GFLOP/s | LLM prefill GFLOP/s | vision GFLOP/s |",
        "|" + "---|" * 10,
    ]
    for method, counted in flops.items():
        row = next((r for r in rows if r["method"] == method and r["budget"] in (budget, 1.0)), None)
        time_share = f"{100 * row['selection_share_of_ttft']:.2f}%" if row else "-"

        def rate(part: str, row=row, counted=counted) -> str:
            return f"{counted[part] / 1e9 / (row[part + '_ms'] / 1e3):,.0f}" if row and row[part + "_ms"] > 0 else "-"

        lines.append(
            f"| {method} | {counted['vision'] / 1e9:,.0f} | {counted['selection'] / 1e9:,.1f} "
            f"| {counted['prefill'] / 1e9:,.0f} | {counted['ttft'] / 1e9:,.0f} "
            f"| {100 * counted['selection'] / counted['ttft']:.2f}% | {time_share} | {rate('selection')} "
            f"| {rate('prefill')} | {rate('vision')} |"
        )
    pruned = next((counted for method, counted in flops.items() if method != "unpruned"), None)
    if pruned is not None:
        lines += [
            "",
            f"Counted LLM prefill FLOP ratio unpruned / pruned: {unpruned['prefill'] / pruned['prefill']:.2f} "
            "(the paper-001 model's ideal ratio is in the table above).",
        ]
    return "\n".join(lines)


SMALL_OP_CATEGORIES = ("elementwise / norm", "copies / layout", "other")


def thread_comparison(runs: dict[str, dict[str, Any]], grouped: dict[str, list[dict[str, Any]]]) -> str:
    """For a preset profiled with different CPU thread counts: the gap to the ideal and the per-call cost of small ops."""
    lines = []
    by_preset: dict[str, list[str]] = {}
    for label, run in runs.items():
        if "profile" in run and "gpu" not in run["machine"]:
            by_preset.setdefault(run["preset"], []).append(label)
    for preset, labels in by_preset.items():
        if len({runs[label]["machine"]["torch_threads"] for label in labels}) < 2:
            continue
        parts = []
        for label in sorted(labels, key=lambda label: runs[label]["machine"]["torch_threads"]):
            run, profile = runs[label], runs[label]["profile"]
            row = next(
                (r for r in grouped[label] if r["method"] == profile["method"] and r["budget"] == profile["budget"]),
                None,
            )
            small = [op for op in profile["runs"]["pruned"]["ops"].values() if op["category"] in SMALL_OP_CATEGORIES]
            small_ms, calls = sum(op["ms"] for op in small), sum(op["calls"] for op in small)
            gap = f"measured / ideal {row['measured_over_ideal']:.2f}" if row else "no timed row"
            parts.append(
                f"{run['machine']['torch_threads']} thread(s): {gap}; the pruned prefill's elementwise, copy and other "
                f"ops took {_ms(small_ms)} ms in {calls} calls ({1e3 * small_ms / max(calls, 1):.0f} us per call); "
                f"load average {run['machine']['load_average_start']} at the start"
            )
        lines.append(
            f"**{preset}** ran with different CPU thread counts, same inputs, budget "
            f"{runs[labels[0]]['profile']['budget']:g} in the profile: " + "; ".join(parts) + ". The same small ops on "
            "the same tensors cost per call what their thread count and the machine's load make them cost: with two "
            "OpenMP threads every op waits for both, and on a shared 2-core machine with other work running one of "
            "them is often descheduled, so each op pays part of a scheduler time slice whatever its size. That cost "
            "does not shrink with the token count; it is the gap to the ideal in the multi-thread run, and it is "
            "absent with one thread."
        )
    return "\n\n".join(lines)


def papers_section(grouped: dict[str, list[dict[str, Any]]]) -> str:
    """The published figures next to this run's at the same operating point, where the run has it."""

    def found(preset: str, method: str, budget: float, describe: Callable[[dict[str, Any]], str]) -> str:
        matches = [
            f"{describe(row)} ({label})"
            for label, rows in grouped.items()
            for row in rows
            if row["preset"] == preset and row["method"] == method and abs(row["budget"] - budget) < 1e-9
        ]
        return "; ".join(matches) or "not run"

    lines = [
        "| claim (paper, hardware) | operating point | published | this benchmark |",
        "|---|---|---|---|",
        "| VisionSelector (paper 000, GPU) whole prefill incl. vision tower | Qwen2.5-VL-7B, 20% of tokens | 1.73x | "
        + found(
            "qwen2.5-vl-7b",
            "visionselector",
            0.2,
            lambda r: f"{r['ttft_speedup']:.2f}x TTFT, {r['measured_prefill_ratio']:.2f}x LLM prefill",
        )
        + " |",
        "| AutoSelect (papers 002/004, A6000 fp16) LLM prefill | LLaVA-1.5-7B, 64 of 576 | 2.85x | "
        + found(
            "llava-1.5-7b",
            "autoselect",
            0.1111,
            lambda r: f"{r['measured_prefill_ratio']:.2f}x (ideal {r['ideal_prefill_ratio']:.2f}x)",
        )
        + " |",
        "| AutoSelect selector time | LLaVA-1.5-7B, 64 of 576 | 0.69 ms = 0.9% of TTFT | "
        + found(
            "llava-1.5-7b",
            "autoselect",
            0.1111,
            lambda r: f"{_ms(r['selection_ms'])} ms = {100 * r['selection_share_of_ttft']:.2f}% of TTFT",
        )
        + " |",
    ]
    return "\n".join(
        lines
        + [
            "",
            "The published figures are GPU measurements of trained models; these are CPU timings of random-weight "
            "models of the same shapes, so absolute times differ by orders of magnitude and only ratios and shares "
            "compare. The ideal ratio bounds the LLM prefill speed-up on any hardware.",
        ]
    )


def render_doc(results: dict[str, Any], plot_dir: Path, sources: list[str]) -> str:
    """The whole report (docs/benchmarks.md); plots are written to `plot_dir`."""
    grouped = _by_run(results["rows"])
    runs = {run_label(run): run for run in results["runs"]}
    parts = [
        "# Benchmarks",
        "",
        "Generated by `hf-tokenprune bench` (`hf_tokenprune/bench.py`); do not edit by hand. Regenerate with the "
        "commands under [Reproduce](#reproduce). Every time is for the **full-depth** model (extrapolated from "
        "per-layer times where the run built fewer layers, see below) and is a median over repeats.",
        "",
        "## Acceptance figures (budget 0.2)",
        "",
    ]
    for label, rows in grouped.items():
        table = _acceptance(rows, 0.2)
        if table:
            parts += [f"**{label}**: {rows[0]['visual_tokens']} visual + {rows[0]['text_tokens']} text tokens.", ""]
            parts += [table, ""]
    parts += ["## Machines", ""]
    parts += [f"- **{label}**: {_machine_line(run)}" for label, run in runs.items()]
    parts += ["", DOC_METHOD]
    for label, rows in grouped.items():
        run = runs[label]
        widths = run["widths"]
        plot = plot_dir / f"benchmarks-{_slug(label)}.png"
        plot_preset(rows, plot)
        parts += [
            f"## {label}",
            "",
            f"{run['description']}. Widths (from {run['source']}): LLM {widths['llm_hidden_size']} hidden, "
            f"{widths['llm_intermediate_size']} FFN, {widths['llm_layers']} layers, {widths['llm_heads']} heads / "
            f"{widths['llm_kv_heads']} KV heads, vocab {widths['vocab_size']:,}; vision {widths['vision_hidden_size']} "
            f"hidden, {widths['vision_intermediate_size']} FFN, {widths['vision_layers']} layers. "
            + (
                "Times extrapolated to full depth from per-layer times."
                if rows[0]["extrapolated"]
                else "Measured at full depth."
            ),
            "",
            markdown_table(rows),
            "",
            f"![{label}]({plot.name})",
            "",
        ]
        if "profile" in run:
            profile = run["profile"]
            views = [profile] + [
                {
                    **profile,
                    "budget": more["budget"],
                    "runs": {**profile["runs"], "pruned": more["pruned"]},
                    "flops": {},
                }
                for more in profile.get("more", [])
            ]
            for view in views:
                parts += [
                    f"### Where the prefill time goes ({label}, budget {view['budget']:g})",
                    "",
                    profile_section({**run, "profile": view}, rows),
                    "",
                ]
    comparison = thread_comparison(runs, grouped)
    if comparison:
        parts += ["## Threads on a shared machine", "", comparison, ""]
    parts += ["## Against the papers", "", papers_section(grouped), ""]
    parts += [
        "## Reproduce",
        "",
        "`benchmarks/regenerate_docs.sh` runs these commands (one per preset, then the merged report):",
        "",
        "```bash",
    ]
    parts += [run["command"] for run in results["runs"]]
    if sources:
        parts.append(f"hf-tokenprune bench --report {','.join(sources)} --doc docs/benchmarks.md")
    parts += ["```", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- entry point
def run_bench(args: BenchArguments) -> dict[str, Any]:
    """`hf-tokenprune bench`: validate every flag, run each preset (or merge `--report` files), write the outputs."""
    parsed = check_arguments(args)
    sources: list[str] = []
    if "report" in parsed:
        runs, rows = [], []
        for path in parsed["report"]:
            data = json.loads(path.read_text())
            tag_rows(data["runs"], data["rows"])
            runs += data["runs"]
            rows += data["rows"]
            sources.append(str(path))
        results = {"schema_version": SCHEMA_VERSION, "runs": runs, "rows": rows}
        if args.output is not None:
            print(write_outputs(results, Path(args.output)))
    else:
        results = {"schema_version": SCHEMA_VERSION, "runs": [], "rows": []}
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)
        try:
            for preset in parsed["presets"]:
                layers, vision_layers = parsed["depths"][preset.name]
                run, rows = run_preset(
                    preset, parsed["methods"], parsed["budgets"], layers, vision_layers, args, parsed["device"]
                )
                run["command"] = command_line(args)
                tag_rows([run], rows)
                results["runs"].append(run)
                results["rows"] += rows
        finally:
            torch.set_num_threads(threads)
        print(write_outputs(results, Path(args.output or "bench.json")))
    if args.doc is not None:
        doc = Path(args.doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(render_doc(results, doc.parent, sources))
    return results
