"""Benchmark presets: stock `transformers` VLMs at the published widths of real checkpoints (random weights).

Every preset is built from a config (no download); language-model and vision depth are arguments, so a
shallower copy can be timed and extrapolated. The tiny presets reuse the test suite's configs
(`hf_tokenprune.testing`) for tests of the benchmark itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from .. import testing
from .inputs import (
    gemma3_inputs,
    internvl_inputs,
    llava_inputs,
    llava_next_inputs,
    llava_onevision_inputs,
    llava_onevision_video_inputs,
    qwen2_5_vl_batch_inputs,
    qwen2_5_vl_inputs,
    qwen2_5_vl_video_inputs,
    qwen3_vl_inputs,
    smolvlm_inputs,
)


def vision_depth(vision_config: PretrainedConfig) -> int:
    """Blocks of a vision tower: Qwen2.5-VL and Qwen3-VL call it `depth`, the others `num_hidden_layers`."""
    return getattr(vision_config, "depth", None) or vision_config.num_hidden_layers


@dataclass(frozen=True)
class Preset:
    """A benchmark model: published widths, an input of realistic size, and where its parts live.

    make_config: (layers, vision_layers) -> config with that depth and the published widths.
    make_inputs: (config, text_tokens, generator) -> inputs of a batch of one, as the stock processor lays them out.
    vision_modules: submodules of `model.model` whose forwards together are vision encoding (tower + projector).
    vision_blocks: path under `model.model` of the vision tower's list of blocks.
    block_kinds: vision config -> kind of every vision block; kinds are extrapolated separately.
    workload: "image" (one image), "video" (one video, its frames pruned like images) or "batch" (several samples
        of one image each, left-padded: the throughput rows).
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
    block_kinds: Callable[[PretrainedConfig], list[str]] = lambda vision_config: ["block"] * vision_depth(vision_config)
    workload: str = "image"


def _qwen_block_kinds(vision_config: PretrainedConfig) -> list[str]:
    full_attention = set(vision_config.fullatt_block_indexes)
    return ["full_attention" if i in full_attention else "window" for i in range(vision_config.depth)]


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


def _qwen3_deepstack(vision_layers: int, published: tuple[int, ...]) -> list[int]:
    """The published DeepStack blocks that fit, else the last block: a reduced tower still feeds DeepStack."""
    return [index for index in published if index < vision_layers] or [vision_layers - 1]


# Qwen3-VL-8B-Instruct config.json: LLM 4096 / 12288 / 36 layers / 32 heads, 8 KV heads, head_dim 128, vocab 151936,
# rope theta 5e6, interleaved M-RoPE sections 24/20/20; ViT depth 27, width 1152, MLP 4304, 16 heads, patch 16,
# 2 x 2 merge, 2304 learned positions (48 x 48, interpolated), no window attention, DeepStack from blocks 8/16/24
# into LLM layers 0-2, merger to 4096.
def _qwen3_vl_8b_config(layers: int, vision_layers: int) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=layers,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            depth=vision_layers,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=4096,
            num_position_embeddings=2304,
            deepstack_visual_indexes=_qwen3_deepstack(vision_layers, (8, 16, 24)),
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


# SmolVLM-Instruct (HuggingFaceTB/SmolVLM-Instruct, 2.2B) config.json: SmolLM2-1.7B = Llama 2048 / 8192 / 24 layers /
# 32 heads (no GQA), vocab 49155, rope theta 273768 (context extended to 16k); shape-optimised SigLIP 1152 / 4304 /
# 27 layers / 16 heads, 384 px views, patch 14 (27 x 27 patches), 3 x 3 pixel shuffle -> 81 tokens per view;
# <fake_token_around_image> 49152, <image> 49153. The checkpoint's class is Idefics3ForConditionalGeneration, whose
# modules are SmolVLM's (SmolVLM's modeling is generated from Idefics3's); the preset builds the SmolVLM class.
def _smolvlm_instruct_config(layers: int, vision_layers: int) -> SmolVLMConfig:
    return SmolVLMConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=49155,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=layers,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=16384,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 273768.0},
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
        ),
        scale_factor=3,
        image_token_id=49153,
        tie_word_embeddings=False,
    )


# LLaVA-OneVision-7B (llava-hf/llava-onevision-qwen2-7b-ov-hf config.json): Qwen2-7B 3584 / 18944 / 28 layers /
# 28 heads, 4 KV heads, vocab 152128, rope theta 1e6; SigLIP-so400m-384 1152 / 4304 / 26 layers / 16 heads, patch
# 14, 729 tokens per 384 px view from layer -1 ("full", no CLS); anyres over 384 px multiples up to 6 x 6 views,
# "anyres_max_9"; <image> 151646, <video> 151647. A 768 x 768 image = base + 2 x 2 crops = 729 + 54 x 55 = 3,699.
def _llava_onevision_7b_config(layers: int, vision_layers: int) -> LlavaOnevisionConfig:
    return LlavaOnevisionConfig(
        text_config=dict(
            model_type="qwen2",
            vocab_size=152128,
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
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            vision_use_head=False,
        ),
        image_token_index=151646,
        video_token_index=151647,
        image_grid_pinpoints=[[384 * rows, 384 * cols] for rows in range(1, 7) for cols in range(1, 7)],
        vision_aspect_ratio="anyres_max_9",
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def _gemma3_layer_types(layers: int, period: int) -> list[str]:
    """Gemma 3's pattern (`period - 1` sliding-window layers, then one full-attention layer), cut to `layers`; a
    reduced stack keeps both kinds (its last layer is full attention when the cut leaves none)."""
    kinds = ["full_attention" if (index + 1) % period == 0 else "sliding_attention" for index in range(layers)]
    if "full_attention" not in kinds:
        kinds[-1] = "full_attention"
    return kinds


# Gemma-3-12B-it (google/gemma-3-12b-it config.json): LLM 3840 / 15360 / 48 layers / 16 heads, 8 KV heads, head_dim
# 256, query_pre_attn_scalar 256, vocab 262208, tied embeddings, rope theta 1e6 (linear x 8) on full layers and 1e4
# on sliding ones, sliding window 1024, 5 sliding : 1 full; SigLIP-So400m 1152 / 4304 / 27 layers / 16 heads, 896 px,
# patch 14 (64 x 64 patches) average-pooled 4 x 4 to mm_tokens_per_image 256; <start_of_image> 255999,
# <end_of_image> 256000, image soft token 262144; "\n\n" is token 108 around each image block.
def _gemma3_12b_config(layers: int, vision_layers: int) -> Gemma3Config:
    return Gemma3Config(
        text_config=dict(
            model_type="gemma3_text",
            vocab_size=262208,
            hidden_size=3840,
            intermediate_size=15360,
            num_hidden_layers=layers,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            query_pre_attn_scalar=256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-6,
            sliding_window=1024,
            layer_types=_gemma3_layer_types(layers, 6),
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=vision_layers,
            num_attention_heads=16,
            image_size=896,
            patch_size=14,
            vision_use_head=False,
        ),
        mm_tokens_per_image=256,
        boi_token_index=255999,
        eoi_token_index=256000,
        image_token_index=262144,
    )


# Tiny presets: the test suite's models (hf_tokenprune.testing, hidden size 32) at full depth 4 / 4, for tests. The text
# and vision configs, the LLaVA-NeXT pinpoints and the token ids are testing's; only the depths differ.
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
            testing.QWEN2_5_VL_VISION_CONFIG,
            depth=vision_layers,
            fullatt_block_indexes=_qwen_full_attention(vision_layers, (1, 3)),
        ),
        image_token_id=testing.IMAGE_ID,
        video_token_id=testing.VIDEO_ID,
        vision_start_token_id=testing.VSTART,
        vision_end_token_id=testing.VEND,
    )


def _tiny_qwen3_vl_config(layers: int, vision_layers: int) -> Qwen3VLConfig:
    return Qwen3VLConfig(
        text_config=dict(
            _tiny_text(layers),
            head_dim=8,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
        ),
        vision_config=dict(
            testing.QWEN3_VL_VISION_CONFIG,
            depth=vision_layers,
            deepstack_visual_indexes=_qwen3_deepstack(vision_layers, (0, 1)),
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
        image_grid_pinpoints=testing.LLAVA_NEXT_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def _tiny_internvl_config(layers: int, vision_layers: int) -> InternVLConfig:
    return InternVLConfig(
        text_config=_tiny_text(layers, "qwen2"),
        vision_config=dict(testing.INTERNVL_VISION_CONFIG, num_hidden_layers=vision_layers),
        image_token_id=testing.IMAGE_ID,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )


def _tiny_smolvlm_config(layers: int, vision_layers: int) -> SmolVLMConfig:
    return SmolVLMConfig(
        text_config=_tiny_text(layers, "llama"),
        vision_config=dict(testing.SMOLVLM_VISION_CONFIG, num_hidden_layers=vision_layers),
        scale_factor=2,
        image_token_id=testing.IMAGE_ID,
    )


def _tiny_llava_onevision_config(layers: int, vision_layers: int) -> LlavaOnevisionConfig:
    return LlavaOnevisionConfig(
        text_config=_tiny_text(layers, "qwen2"),
        vision_config=dict(testing.SIGLIP_VISION_CONFIG, num_hidden_layers=vision_layers),
        image_token_index=testing.IMAGE_ID,
        video_token_index=testing.VIDEO_ID,
        image_grid_pinpoints=testing.LLAVA_NEXT_PINPOINTS,
        vision_aspect_ratio=testing.ONEVISION_ASPECT_RATIO,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )


def _tiny_gemma3_config(layers: int, vision_layers: int) -> Gemma3Config:
    return Gemma3Config(
        text_config=dict(
            _tiny_text(layers, "gemma3_text"),
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=512,
            layer_types=_gemma3_layer_types(layers, 2),
        ),
        vision_config=dict(testing.GEMMA3_VISION_CONFIG, num_hidden_layers=vision_layers),
        mm_tokens_per_image=testing.GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=testing.VSTART,
        eoi_token_index=testing.VEND,
        image_token_index=testing.IMAGE_ID,
    )


_QWEN_TOKENS = (1000, 150000)
_LLAMA_TOKENS = (1000, 31000)
_TINY_TOKENS = (testing.TEXT_TOKENS.start, testing.TEXT_TOKENS.stop)
# CLIP and (LLaVA-OneVision's) SigLIP towers alike: transformers 5 keeps their blocks at `encoder.layers`.
_CLIP_PARTS = dict(
    vision_modules=("vision_tower", "multi_modal_projector"), vision_blocks="vision_tower.encoder.layers"
)
_INTERNVL_PARTS = dict(
    vision_modules=("vision_tower", "multi_modal_projector"), vision_blocks="vision_tower.encoder.layer"
)
_GEMMA3_PARTS = dict(
    vision_modules=("vision_tower", "multi_modal_projector"), vision_blocks="vision_tower.encoder.layers"
)
_GEMMA_TOKENS = (1000, 250000)
_QWEN_PARTS = dict(vision_modules=("visual",), vision_blocks="visual.blocks", block_kinds=_qwen_block_kinds)
_SMOLVLM_PARTS = dict(vision_modules=("vision_model", "connector"), vision_blocks="vision_model.encoder.layers")
_QWEN3_PARTS = dict(vision_modules=("visual",), vision_blocks="visual.blocks")  # one block kind: no windows

# The batch-throughput presets' images, (rows, cols) patches of 14 px: 224 x 224 to 672 x 448 (16 to 48 patches a side).
_MIXED_IMAGE_PATCHES = [(16, 16), (32, 32), (48, 32), (32, 48), (24, 24), (16, 32), (40, 40), (32, 16)]
_TINY_MIXED_IMAGE_PATCHES = [(4, 4), (8, 8), (8, 4), (4, 8), (4, 4), (8, 8), (4, 8), (8, 4)]

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "qwen2.5-vl-7b",
            "Qwen2.5-VL-7B widths; one 896 x 896 image = 64 x 64 patches = 1,024 visual tokens",
            "Qwen/Qwen2.5-VL-7B-Instruct config.json; paper 000 Sec. 4.2",
            Qwen2_5_VLForConditionalGeneration,
            _qwen2_5_vl_7b_config,
            qwen2_5_vl_inputs((64, 64), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=32,
            **_QWEN_PARTS,
        ),
        Preset(
            "qwen3-vl-8b",
            "Qwen3-VL-8B widths; one 1024 x 1024 image = 64 x 64 patches of 16 px = 1,024 visual tokens",
            "Qwen/Qwen3-VL-8B-Instruct config.json",
            Qwen3VLForConditionalGeneration,
            _qwen3_vl_8b_config,
            qwen3_vl_inputs((64, 64), _QWEN_TOKENS),
            full_layers=36,
            full_vision_layers=27,
            **_QWEN3_PARTS,
        ),
        Preset(
            "llava-1.5-7b",
            "LLaVA-1.5-7B widths; one 336 x 336 image = 576 visual tokens",
            "llava-hf/llava-1.5-7b-hf config.json; papers 002/004 (N = 576)",
            LlavaForConditionalGeneration,
            _llava_1_5_7b_config,
            llava_inputs(_LLAMA_TOKENS),
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
            llava_next_inputs((672, 672), _LLAMA_TOKENS),
            full_layers=32,
            full_vision_layers=24,
            **_CLIP_PARTS,
        ),
        Preset(
            "gemma3-12b",
            "Gemma-3-12B widths; one 896 x 896 image = 64 x 64 patches pooled to 256 visual tokens",
            "google/gemma-3-12b-it config.json",
            Gemma3ForConditionalGeneration,
            _gemma3_12b_config,
            gemma3_inputs(108, _GEMMA_TOKENS),
            full_layers=48,
            full_vision_layers=27,
            **_GEMMA3_PARTS,
        ),
        Preset(
            "llava-onevision-7b",
            "LLaVA-OneVision-7B widths; one 768 x 768 image = base + 2 x 2 crops = 3,699 visual tokens (with row newlines)",
            "llava-hf/llava-onevision-qwen2-7b-ov-hf config.json",
            LlavaOnevisionForConditionalGeneration,
            _llava_onevision_7b_config,
            llava_onevision_inputs((768, 768), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=26,
            **_CLIP_PARTS,
        ),
        Preset(
            "internvl3-8b",
            "InternVL3-8B widths; one image as 4 tiles + thumbnail of 448 px = 5 x 256 = 1,280 visual tokens",
            "OpenGVLab/InternVL3-8B-hf config.json (InternViT-300M-448px + Qwen2.5-7B)",
            InternVLForConditionalGeneration,
            _internvl3_8b_config,
            internvl_inputs(5, (151665, 151666), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=24,
            **_INTERNVL_PARTS,
        ),
        Preset(
            "smolvlm-instruct",
            "SmolVLM-Instruct (2.2B) widths; one 1536 x 1536 image = 4 x 4 sub-images + global view of 384 px "
            "= 17 x 81 = 1,377 visual tokens",
            "HuggingFaceTB/SmolVLM-Instruct config.json (SmolLM2-1.7B + SigLIP 384 px, 3 x 3 pixel shuffle)",
            SmolVLMForConditionalGeneration,
            _smolvlm_instruct_config,
            smolvlm_inputs((4, 4), 49152, _LLAMA_TOKENS),
            full_layers=24,
            full_vision_layers=27,
            **_SMOLVLM_PARTS,
        ),
        # Video (issue 21): Qwen2.5-VL's processor caps a video's total pixels, so more frames come at a lower
        # resolution; two frames make one temporal patch group, and each group is one unit of the budget.
        Preset(
            "qwen2.5-vl-7b-video16",
            "Qwen2.5-VL-7B widths; one video of 16 frames at 448 x 448 = 8 temporal groups x 16 x 16 merged patches "
            "= 2,048 visual tokens",
            "Qwen/Qwen2.5-VL-7B-Instruct config.json",
            Qwen2_5_VLForConditionalGeneration,
            _qwen2_5_vl_7b_config,
            qwen2_5_vl_video_inputs(16, (32, 32), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=32,
            workload="video",
            **_QWEN_PARTS,
        ),
        Preset(
            "qwen2.5-vl-7b-video64",
            "Qwen2.5-VL-7B widths; one video of 64 frames at 336 x 336 = 32 temporal groups x 12 x 12 merged patches "
            "= 4,608 visual tokens",
            "Qwen/Qwen2.5-VL-7B-Instruct config.json",
            Qwen2_5_VLForConditionalGeneration,
            _qwen2_5_vl_7b_config,
            qwen2_5_vl_video_inputs(64, (24, 24), _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=32,
            workload="video",
            **_QWEN_PARTS,
        ),
        Preset(
            "llava-onevision-7b-video",
            "LLaVA-OneVision-7B widths; one video of 16 frames at 384 x 384, 27 x 27 patches pooled 2 x 2 to 14 x 14 "
            "per frame = 16 x 196 + 1 newline = 3,137 visual tokens",
            "llava-hf/llava-onevision-qwen2-7b-ov-hf config.json",
            LlavaOnevisionForConditionalGeneration,
            _llava_onevision_7b_config,
            llava_onevision_video_inputs(16, _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=26,
            workload="video",
            **_CLIP_PARTS,
        ),
        Preset(
            "qwen2.5-vl-7b-batch8",
            "Qwen2.5-VL-7B widths; a left-padded batch of 8 samples, one image each, of mixed sizes from 224 x 224 to "
            "672 x 448 = 1,888 visual tokens in all",
            "Qwen/Qwen2.5-VL-7B-Instruct config.json",
            Qwen2_5_VLForConditionalGeneration,
            _qwen2_5_vl_7b_config,
            qwen2_5_vl_batch_inputs(_MIXED_IMAGE_PATCHES, _QWEN_TOKENS),
            full_layers=28,
            full_vision_layers=32,
            workload="batch",
            **_QWEN_PARTS,
        ),
        Preset(
            "tiny-qwen2.5-vl-video",
            "tiny random Qwen2.5-VL (hidden 32), one video of 8 frames of 8 x 8 patches = 4 x 16 visual tokens",
            "hf_tokenprune.testing",
            Qwen2_5_VLForConditionalGeneration,
            _tiny_qwen2_5_vl_config,
            qwen2_5_vl_video_inputs(8, (8, 8), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            workload="video",
            **_QWEN_PARTS,
        ),
        Preset(
            "tiny-llava-onevision-video",
            "tiny random LLaVA-OneVision (hidden 32), one video of 4 frames = 4 x 4 + 1 visual tokens",
            "hf_tokenprune.testing",
            LlavaOnevisionForConditionalGeneration,
            _tiny_llava_onevision_config,
            llava_onevision_video_inputs(4, _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            workload="video",
            **_CLIP_PARTS,
        ),
        Preset(
            "tiny-qwen2.5-vl-batch8",
            "tiny random Qwen2.5-VL (hidden 32), a left-padded batch of 8 images of mixed sizes",
            "hf_tokenprune.testing",
            Qwen2_5_VLForConditionalGeneration,
            _tiny_qwen2_5_vl_config,
            qwen2_5_vl_batch_inputs(_TINY_MIXED_IMAGE_PATCHES, _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            workload="batch",
            **_QWEN_PARTS,
        ),
        Preset(
            "tiny-qwen2.5-vl",
            "tiny random Qwen2.5-VL (hidden 32), one 16 x 16-patch image = 64 visual tokens",
            "hf_tokenprune.testing",
            Qwen2_5_VLForConditionalGeneration,
            _tiny_qwen2_5_vl_config,
            qwen2_5_vl_inputs((16, 16), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_QWEN_PARTS,
        ),
        Preset(
            "tiny-qwen3-vl",
            "tiny random Qwen3-VL (hidden 32), one 16 x 16-patch image = 64 visual tokens",
            "hf_tokenprune.testing",
            Qwen3VLForConditionalGeneration,
            _tiny_qwen3_vl_config,
            qwen3_vl_inputs((16, 16), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_QWEN3_PARTS,
        ),
        Preset(
            "tiny-llava",
            "tiny random LLaVA (hidden 32), 16 visual tokens",
            "hf_tokenprune.testing",
            LlavaForConditionalGeneration,
            _tiny_llava_config,
            llava_inputs(_TINY_TOKENS),
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
            llava_next_inputs((16, 16), _TINY_TOKENS),
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
            internvl_inputs(3, (testing.VSTART, testing.VEND), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_INTERNVL_PARTS,
        ),
        Preset(
            "tiny-smolvlm",
            "tiny random SmolVLM (hidden 32), one image of 2 x 2 sub-images + global view = 5 x 4 = 20 visual tokens",
            "hf_tokenprune.testing",
            SmolVLMForConditionalGeneration,
            _tiny_smolvlm_config,
            smolvlm_inputs((2, 2), testing.SMOLVLM_FAKE, _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_SMOLVLM_PARTS,
        ),
        Preset(
            "tiny-llava-onevision",
            "tiny random LLaVA-OneVision (hidden 32), one 16 x 10 px anyres image, its crops shrunk (anyres_max_2)",
            "hf_tokenprune.testing",
            LlavaOnevisionForConditionalGeneration,
            _tiny_llava_onevision_config,
            llava_onevision_inputs((16, 10), _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_CLIP_PARTS,
        ),
        Preset(
            "tiny-gemma3",
            "tiny random Gemma 3 (hidden 32), one 16 x 16 px image = 16 visual tokens",
            "hf_tokenprune.testing",
            Gemma3ForConditionalGeneration,
            _tiny_gemma3_config,
            gemma3_inputs(testing.NEWLINES_ID, _TINY_TOKENS),
            full_layers=4,
            full_vision_layers=4,
            **_GEMMA3_PARTS,
        ),
    )
}
