"""Tiny random vision-language models built from configs, model inputs built directly, and a tiny tokenizer.

For tests, demos and the README snippet: nothing here downloads anything.

As in the `transformers` model testers: hidden size 32, two layers. The stock processors of
Qwen2.5-VL and InternVL need torchvision (not installable here), so inputs are assembled by hand
exactly as the processors lay them out: placeholder tokens at the image positions, pixel tensors
of the right shape, and the per-model extras (`image_grid_thw`, `mm_token_type_ids`, `image_sizes`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from .processing import (  # re-exported for the tests
    ImageOnlyInternVLProcessor,
    ImageOnlyLlavaOnevisionProcessor,
    ImageOnlyQwen2_5_VLProcessor,
    ImageOnlyQwen3VLProcessor,
)

VOCAB = 64
PAD, BOS, EOS = 0, 1, 2
TEXT_TOKENS = range(8, 40)  # ordinary text ids; specials live above 40
IMAGE_ID, VIDEO_ID, VSTART, VEND = 60, 61, 58, 59

#: Where the tiny models and their inputs live: `HF_TOKENPRUNE_TEST_DEVICE=cuda` runs the suites that use them on a GPU
#: (the contract checks as written, float32), CPU otherwise. CI has no GPU; docs/benchmarks.md records the GPU runs.
TEST_DEVICE = torch.device(os.environ.get("HF_TOKENPRUNE_TEST_DEVICE", "cpu"))


def on_test_device(inputs: dict) -> dict:
    """`inputs` with every tensor moved to `TEST_DEVICE` (other values as they are)."""
    return {name: value.to(TEST_DEVICE) if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}


WORDS = (
    "a the is what colour shape red green blue yellow circle square triangle star left right top bottom "
    "how many one two three yes no word box cat dog sun moon tree house"
).split()


def _word_level_tokenizer(extra_vocab: dict[str, int], special_tokens=(), **kwargs) -> PreTrainedTokenizerFast:
    """Whitespace-split word-level tokenizer: specials below 8, `WORDS` at 8..39, plus `extra_vocab`; left padding."""
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
    vocab.update({word: TEXT_TOKENS[i] for i, word in enumerate(WORDS[: len(TEXT_TOKENS)])})
    vocab.update(extra_vocab)
    assert max(vocab.values()) < VOCAB
    return word_level_tokenizer(vocab, special_tokens, **kwargs)


def word_level_tokenizer(vocab: dict[str, int], special_tokens=(), **kwargs) -> PreTrainedTokenizerFast:
    """Whitespace-split word-level tokenizer over `vocab` (which holds `<pad>`, `<s>`, `</s>`, `<unk>`); left padding.

    `special_tokens` (already in `vocab`, ids unchanged) split themselves out of running text.
    """
    if len(set(vocab.values())) != len(vocab):
        raise ValueError("`vocab` maps two words to one id")
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if special_tokens:
        tokenizer.add_special_tokens(list(special_tokens))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        **kwargs,
    )


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer matching the tiny models' ids: text words at 8..39, specials below 8, vision ids at 58..61."""
    return _word_level_tokenizer(
        {"<|vision_start|>": VSTART, "<|vision_end|>": VEND, "<|image_pad|>": IMAGE_ID, "<|video_pad|>": VIDEO_ID}
    )


def tiny_qwen2_5_vl_inputs(question: str = "what colour is the circle", image_patches: tuple[int, int] = (8, 8)):
    """Inputs for `tiny_qwen2_5_vl`: one random image of `image_patches` (rows, cols) patches and a question."""
    tokenizer = tiny_tokenizer()
    words = tokenizer(question, add_special_tokens=False)["input_ids"]
    return build_inputs("qwen2_5_vl", [Sample(prefix=[], images=[image_patches], suffix=words)])


TEXT_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
)


CLIP_VISION_CONFIG = dict(
    model_type="clip_vision_model",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=8,
    patch_size=2,
    projection_dim=16,
)

SIGLIP_VISION_CONFIG = dict(
    model_type="siglip_vision_model",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=8,
    patch_size=2,
    vision_use_head=False,
)


QWEN2_5_VL_VISION_CONFIG = dict(
    depth=2,
    hidden_size=16,
    intermediate_size=32,
    num_heads=2,
    patch_size=2,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=8,
    out_hidden_size=32,
    fullatt_block_indexes=[1],
)
# Qwen3-VL: no window attention; a 4 x 4 learned position grid (interpolated per image); DeepStack after both blocks.
QWEN3_VL_VISION_CONFIG = dict(
    depth=2,
    hidden_size=16,
    intermediate_size=32,
    num_heads=2,
    patch_size=2,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=32,
    num_position_embeddings=16,
    deepstack_visual_indexes=[0, 1],
)
INTERNVL_VISION_CONFIG = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=[8, 8],
    patch_size=[2, 2],
)


# SigLIP as in Gemma 3: 16 px images of 2 px patches (8 x 8 patches), average-pooled 2 x 2 into 16 soft tokens.
GEMMA3_VISION_CONFIG = dict(
    model_type="siglip_vision_model",
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=16,
    patch_size=2,
)
GEMMA3_TOKENS_PER_IMAGE = 16
# Gemma 3's image block, "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n", with "\n\n" one token as in the
# real tokenizer; id 57 is free in the tiny vocabulary.
NEWLINES_ID = 57


def tiny_gemma3(
    attn_implementation: str = "eager",
    sliding_window: int = 512,
    layer_types: tuple[str, ...] = ("sliding_attention", "full_attention"),
) -> Gemma3ForConditionalGeneration:
    """Tiny Gemma 3: one sliding-window layer then one full-attention layer, as Gemma 3 interleaves them.

    The default window covers every prompt of the contract suite; pass a small `sliding_window` to exercise it, and
    `layer_types` for another depth or pattern.
    """
    config = Gemma3Config(
        text_config=dict(
            TEXT_CONFIG,
            model_type="gemma3_text",
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=sliding_window,
            num_hidden_layers=len(layer_types),
            layer_types=list(layer_types),
        ),
        vision_config=dict(GEMMA3_VISION_CONFIG),
        mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=VSTART,
        eoi_token_index=VEND,
        image_token_index=IMAGE_ID,
    )
    return _build(Gemma3ForConditionalGeneration, config, attn_implementation)


def tiny_qwen2_5_vl(attn_implementation: str = "eager") -> Qwen2_5_VLForConditionalGeneration:
    config = Qwen2_5_VLConfig(
        text_config=dict(
            TEXT_CONFIG, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
        ),
        vision_config=dict(QWEN2_5_VL_VISION_CONFIG),
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )
    return _build(Qwen2_5_VLForConditionalGeneration, config, attn_implementation)


def tiny_qwen3_vl(attn_implementation: str = "eager") -> Qwen3VLForConditionalGeneration:
    # Interleaved M-RoPE over head_dim 8: sections (t, h, w) = (2, 1, 1) frequency pairs.
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=dict(TEXT_CONFIG, head_dim=8, rope_parameters=rope),
        vision_config=dict(QWEN3_VL_VISION_CONFIG),
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )
    return _build(Qwen3VLForConditionalGeneration, config, attn_implementation)


def tiny_llava(attn_implementation: str = "eager") -> LlavaForConditionalGeneration:
    config = LlavaConfig(
        text_config=dict(TEXT_CONFIG, model_type="llama"),
        vision_config=dict(CLIP_VISION_CONFIG),
        image_token_index=IMAGE_ID,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return _build(LlavaForConditionalGeneration, config, attn_implementation)


LLAVA_NEXT_PINPOINTS = [[8, 8], [8, 16], [16, 8], [16, 16]]


def tiny_llava_next(attn_implementation: str = "eager") -> LlavaNextForConditionalGeneration:
    config = LlavaNextConfig(
        text_config=dict(TEXT_CONFIG, model_type="llama"),
        vision_config=dict(CLIP_VISION_CONFIG),
        image_token_index=IMAGE_ID,
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return _build(LlavaNextForConditionalGeneration, config, attn_implementation)


# "anyres_max_2": crops beyond two base views' worth of tokens are shrunk (the published models use 9 of 384 px).
ONEVISION_ASPECT_RATIO = "anyres_max_2"


def tiny_llava_onevision(attn_implementation: str = "eager") -> LlavaOnevisionForConditionalGeneration:
    config = LlavaOnevisionConfig(
        text_config=dict(TEXT_CONFIG, model_type="qwen2"),
        vision_config=dict(SIGLIP_VISION_CONFIG),
        image_token_index=IMAGE_ID,
        video_token_index=VIDEO_ID,
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=ONEVISION_ASPECT_RATIO,
    )
    return _build(LlavaOnevisionForConditionalGeneration, config, attn_implementation)


def tiny_internvl(attn_implementation: str = "eager") -> InternVLForConditionalGeneration:
    config = InternVLConfig(
        text_config=dict(TEXT_CONFIG, model_type="qwen2"),
        vision_config=dict(INTERNVL_VISION_CONFIG),
        image_token_id=IMAGE_ID,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return _build(InternVLForConditionalGeneration, config, attn_implementation)


# SmolVLM: one 8 x 8 px view = 4 x 4 patches -> 2 x 2 LLM tokens after the 2 x 2 pixel shuffle.
SMOLVLM_VISION_CONFIG = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=8, patch_size=2
)
SMOLVLM_VIEW_TOKENS = 4


def tiny_smolvlm(attn_implementation: str = "eager") -> SmolVLMForConditionalGeneration:
    config = SmolVLMConfig(
        text_config=dict(TEXT_CONFIG, model_type="llama"),
        vision_config=dict(SMOLVLM_VISION_CONFIG),
        scale_factor=2,
        image_token_id=IMAGE_ID,
        pad_token_id=PAD,
    )
    return _build(SmolVLMForConditionalGeneration, config, attn_implementation)


def tiny_idefics3(attn_implementation: str = "eager") -> Idefics3ForConditionalGeneration:
    """SmolVLM's parent (the class of HuggingFaceTB/SmolVLM-Instruct) with `tiny_smolvlm`'s config and inputs."""
    config = Idefics3Config(
        text_config=dict(TEXT_CONFIG, model_type="llama"),
        vision_config=dict(SMOLVLM_VISION_CONFIG),
        scale_factor=2,
        image_token_id=IMAGE_ID,
        pad_token_id=PAD,
    )
    return _build(Idefics3ForConditionalGeneration, config, attn_implementation)


def _build(model_cls, config, attn_implementation):
    torch.manual_seed(0)
    config._attn_implementation = attn_implementation
    model = model_cls(config).eval()
    # Random init leaves some layers near-degenerate; a larger std makes logits depend visibly on every token.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # tests generate a fixed number of tokens
    model.generation_config.do_sample = False
    return model.to(TEST_DEVICE)


@dataclass
class Sample:
    """One prompt: text before/after each image, and per image a size (arch-specific meaning)."""

    prefix: list[int]
    images: list[tuple[int, int]]
    suffix: list[int]
    seed: int = 0  # pixel values depend on the sample alone, so a sample is the same inside and outside a batch


def _text(seed: int, length: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [TEXT_TOKENS[i] for i in torch.randint(len(TEXT_TOKENS), (length,), generator=generator).tolist()]


def make_samples(image_counts: list[int], sizes: list[tuple[int, int]], seed: int = 0) -> list[Sample]:
    """Samples with the given number of images each; image sizes cycle through `sizes`."""
    samples, size_index = [], 0
    for index, count in enumerate(image_counts):
        images = []
        for _ in range(count):
            images.append(sizes[size_index % len(sizes)])
            size_index += 1
        samples.append(
            Sample(_text(seed + 10 * index, 3 + index), images, _text(seed + 10 * index + 5, 4), seed + index)
        )
    return samples


def build_inputs(arch: str, samples: list[Sample], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded batch of `samples` in the layout the stock processor of `arch` produces."""
    tiny = TINY_ARCHITECTURES[arch]
    rows, pixel_values, image_extras = [], [], []
    for sample in samples:
        row = [BOS] + sample.prefix
        for image_index, (height, width) in enumerate(sample.images):
            generator = torch.Generator().manual_seed(seed + 1000 * sample.seed + image_index)
            in_sample = (len(sample.images),) if tiny.image_block_takes_sample_count else ()
            tokens, pixels, extra = tiny.image_block(height, width, generator, *in_sample)
            pixel_values.append(pixels)
            image_extras.append(dict(extra, sample=len(rows), num_samples=len(samples)))
            row += tokens + sample.suffix[:1]
        row += sample.suffix
        rows.append(row)
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[PAD] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pixel_values:
        inputs.update(tiny.batch_images(pixel_values, image_extras))
    inputs.update(tiny.text_inputs(input_ids))
    return on_test_device(inputs)


def _qwen2_5_vl_image(height, width, generator):
    # (height, width) in patches of 2 px; 2 x 2 patches merge into one LLM token.
    pixels = torch.randn(height * width, 3 * 2 * 2 * 2, generator=generator)
    return [VSTART] + [IMAGE_ID] * (height * width // 4) + [VEND], pixels, {"image_grid_thw": [1, height, width]}


def _qwen2_5_vl_batch(pixel_values, extras):
    return {
        "pixel_values": torch.cat(pixel_values),
        "image_grid_thw": torch.tensor([extra["image_grid_thw"] for extra in extras]),
    }


def _mrope_positions(model, inputs):
    """Unpruned 3-D M-RoPE positions (3, B, L), from the stock `get_rope_index` (Qwen2.5-VL, Qwen3-VL)."""
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),  # Qwen2.5-VL only; Qwen3-VL takes and ignores it
        attention_mask=inputs["attention_mask"],
    )
    return positions


def _mask_positions(model, inputs):
    """Unpruned 1-D positions (B, L): the attention mask's cumulative sum, as `generate` makes them."""
    mask = inputs["attention_mask"]
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _llava_image(height, width, generator):
    return [IMAGE_ID] * 16, torch.randn(1, 3, 8, 8, generator=generator), {}


def _internvl_image(height, width, generator):
    # `height` tiles of 8 x 8 px, each 4 tokens after the 2 x 2 pixel shuffle.
    return [VSTART] + [IMAGE_ID] * (4 * height) + [VEND], torch.randn(height, 3, 8, 8, generator=generator), {}


def _concatenated_pixels(pixel_values, extras):
    return {"pixel_values": torch.cat(pixel_values)}


def _llava_next_image(height, width, generator):
    # (height, width) in pixels; anyres tiles of 8 px; base view + crops, unpadded, with row newlines.
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    num_crops = image_size_to_num_patches((height, width), LLAVA_NEXT_PINPOINTS, 8)
    pixels = torch.randn(num_crops, 3, 8, 8, generator=generator)
    return [IMAGE_ID] * llava_next_token_count(height, width), pixels, {"image_size": [height, width]}


def _llava_next_batch(pixel_values, extras):
    return {
        "pixel_values": torch.stack(_pad_crops(pixel_values)),
        "image_sizes": torch.tensor([extra["image_size"] for extra in extras]),
    }


def llava_next_token_count(height: int, width: int) -> int:
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    rows, cols = get_anyres_image_grid_shape((height, width), LLAVA_NEXT_PINPOINTS, 8)
    grid = torch.zeros(1, rows * 4, cols * 4)
    unpadded = unpad_image(grid, (height, width))
    return 16 + unpadded.shape[1] * (unpadded.shape[2] + 1)


def _pad_crops(pixel_values: list[torch.Tensor]) -> list[torch.Tensor]:
    most = max(p.shape[0] for p in pixel_values)
    return [torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p in pixel_values]


# SmolVLM's framing tokens: `<fake_token_around_image>` and `<global-img>` take the vision start / end ids, the
# `<row_r_col_c>` tags of a grid of up to 3 x 3 sub-images take 45..53, `<end_of_utterance>` 54.
SMOLVLM_FAKE, SMOLVLM_GLOBAL = VSTART, VEND
SMOLVLM_ROW_COL = {(row, col): 45 + 3 * (row - 1) + (col - 1) for row in (1, 2, 3) for col in (1, 2, 3)}
SMOLVLM_END_OF_UTTERANCE = 54


def _smolvlm_image(height, width, generator):
    # (height, width) = (rows, cols) of the sub-image grid; (0, 0) is an image that is not split (global view only).
    # As Idefics3Processor writes it: each sub-image after its row/col tag, then the global view; the "\n" between
    # rows is whitespace to the tiny tokenizer.
    tokens = []
    for row in range(1, height + 1):
        for col in range(1, width + 1):
            tokens += [SMOLVLM_FAKE, SMOLVLM_ROW_COL[row, col]] + [IMAGE_ID] * SMOLVLM_VIEW_TOKENS
    tokens += [SMOLVLM_FAKE, SMOLVLM_GLOBAL] + [IMAGE_ID] * SMOLVLM_VIEW_TOKENS + [SMOLVLM_FAKE]
    pixels = torch.randn(height * width + 1, 3, 8, 8, generator=generator)
    return tokens, pixels, {}


def _smolvlm_batch(pixel_values, extras):
    # (B, most views of a sample, C, H, W), all-zero padding views; the mask is 1 on every pixel of a real view.
    per_sample = [[] for _ in range(extras[0]["num_samples"])]
    for pixels, extra in zip(pixel_values, extras, strict=True):
        per_sample[extra["sample"]].append(pixels)
    views = [torch.cat(sample) if sample else pixel_values[0][:0] for sample in per_sample]
    padded = torch.stack(_pad_crops(views))
    masks = [torch.ones(v.shape[0], *v.shape[2:], dtype=torch.long) for v in views]
    return {"pixel_values": padded, "pixel_attention_mask": torch.stack(_pad_crops(masks))}


def smolvlm_image_token_counts(input_ids: torch.Tensor) -> list[int]:
    """Placeholder tokens of each SmolVLM image (all its views), row-major: the view after `<global-img>` ends one."""
    counts = []
    for row in input_ids.tolist():
        count, tag = 0, None
        for previous, token, following in zip([PAD, *row[:-1]], row, [*row[1:], PAD], strict=True):
            if token != IMAGE_ID:
                continue
            tag = previous if previous != IMAGE_ID else tag
            count += 1
            if following != IMAGE_ID and tag == SMOLVLM_GLOBAL:
                counts.append(count)
                count = 0
    return counts


def placeholder_run_lengths(input_ids: torch.Tensor) -> list[int]:
    """Placeholder tokens of each image, row-major, where every image is one run of `IMAGE_ID`."""
    from .modeling.modeling_pruned_internvl import placeholder_runs

    return placeholder_runs(input_ids, IMAGE_ID)


def _llava_onevision_image(height, width, generator, images_in_sample):
    # As LLaVA-NeXT for an image alone in its sample (plus the anyres_max shrink); with several, base view + newline.
    if images_in_sample > 1:
        tokens, pixels = [IMAGE_ID] * (16 + 1), torch.randn(1, 3, 8, 8, generator=generator)
    else:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        num_crops = image_size_to_num_patches((height, width), LLAVA_NEXT_PINPOINTS, 8)
        tokens = [IMAGE_ID] * llava_onevision_token_count(height, width)
        pixels = torch.randn(num_crops, 3, 8, 8, generator=generator)
    return tokens, pixels, {"image_size": [height, width], "images_in_sample": images_in_sample}


def _llava_onevision_batch(pixel_values, extras):
    batch_num_images, index = [], 0
    while index < len(extras):  # the images of one sample are consecutive
        batch_num_images.append(extras[index]["images_in_sample"])
        index += batch_num_images[-1]
    return {
        "pixel_values": torch.stack(_pad_crops(pixel_values)),
        "image_sizes": torch.tensor([extra["image_size"] for extra in extras]),
        "batch_num_images": torch.tensor(batch_num_images),
    }


def llava_onevision_token_count(height: int, width: int) -> int:
    """Tokens of an image alone in its sample: base view, then the unpadded crops (shrunk past `anyres_max_<n>`
    base views, as `pack_image_features` does) with one newline per row."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape, unpad_image

    rows, cols = get_anyres_image_grid_shape((height, width), LLAVA_NEXT_PINPOINTS, 8)
    unpadded = unpad_image(torch.zeros(1, rows * 4, cols * 4), (height, width))
    grid_rows, grid_cols = unpadded.shape[1:]
    ratio = math.sqrt(grid_rows * grid_cols / (int(ONEVISION_ASPECT_RATIO.removeprefix("anyres_max_")) * 16))
    if ratio > 1.1:
        grid_rows, grid_cols = int(grid_rows // ratio), int(grid_cols // ratio)
    return 16 + grid_rows * (grid_cols + 1)


def make_llava_onevision_video_inputs(frames: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LLaVA-OneVision video prompt as its processor lays it out: `frames` 8 x 8 px frames, each 2 x 2 pooled
    tokens after the 4 x 4 patch grid, then one newline token, all `VIDEO_ID`."""
    generator = torch.Generator().manual_seed(seed)
    row = [BOS] + _text(seed, 3) + [VIDEO_ID] * (frames * 4 + 1) + _text(seed + 1, 4)
    input_ids = torch.tensor([row])
    return on_test_device(
        {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values_videos": torch.randn(1, frames, 3, 8, 8, generator=generator),
        }
    )


def _gemma3_image(crops, _, generator):
    """`crops` pan-and-scan crops (0: none): each crop is one more image block, after the original's (stock layout)."""
    block = [NEWLINES_ID, VSTART] + [IMAGE_ID] * GEMMA3_TOKENS_PER_IMAGE + [VEND, NEWLINES_ID]
    pixels = torch.randn(1 + crops, 3, 16, 16, generator=generator)
    if not crops:
        return block, pixels, {}
    tokenizer = _gemma3_words()
    intro, outro = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in GEMMA3_PAN_AND_SCAN_TEXT)
    return intro + block + outro + block * crops, pixels, {}


# The words the stock processor writes around pan-and-scan crops (`Gemma3Processor.replace_image_token`).
GEMMA3_PAN_AND_SCAN_TEXT = ("Here is the original image", "and here are some crops to help you see better")


def _gemma3_words() -> PreTrainedTokenizerFast:
    global _GEMMA3_TOKENIZER
    if _GEMMA3_TOKENIZER is None:
        _GEMMA3_TOKENIZER = tiny_chat_tokenizer("gemma3")
    return _GEMMA3_TOKENIZER


_GEMMA3_TOKENIZER: PreTrainedTokenizerFast | None = None


def _gemma3_text_inputs(input_ids):
    return {"token_type_ids": (input_ids == IMAGE_ID).long()}


def make_video_inputs(frames: int = 4, height: int = 4, width: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Qwen2.5-VL video prompt: `frames` frames (temporal patch 2), each `height` x `width` patches."""
    generator = torch.Generator().manual_seed(seed)
    grid_t = frames // 2
    tokens = grid_t * height * width // 4
    row = [BOS] + _text(seed, 3) + [VSTART] + [VIDEO_ID] * tokens + [VEND] + _text(seed + 1, 4)
    input_ids = torch.tensor([row])
    return on_test_device(
        {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values_videos": torch.randn(grid_t * height * width, 3 * 2 * 2 * 2, generator=generator),
            "video_grid_thw": torch.tensor([[grid_t, height, width]]),
            "second_per_grid_ts": torch.tensor([1.0]),
            "mm_token_type_ids": (input_ids == VIDEO_ID).int() * 2,
        }
    )


# --- Tiny processors -------------------------------------------------------------------------------------------
#
# The stock Qwen2.5-VL and InternVL processors refuse to build without a video processor, video processors need
# torchvision (not installable here), and every real processor is a download. The processors below are built from
# the stock classes and the stock (PIL-backend) image processors, configured for the tiny vision towers above, with
# a word-level tokenizer that shares the tiny models' ids. They exist so that tests can exercise the real
# chat-template -> processor -> model path (placeholder expansion, padding, `image_grid_thw`, tiling) offline.

# Chat tokens, in ids the tiny tokenizer leaves free (all < VOCAB). `<|im_start|>`/`<|im_end|>` are special.
IM_START, IM_END = 40, 41
ROLE_TOKENS = {"system": 42, "user": 43, "assistant": 44}

# Image placeholder names per architecture, as the stock processor expects them in the rendered text, and the ids
# 58..61 they occupy in that architecture's tokenizer (IMAGE_ID = 60 is every tiny model's image_token_id).
CHATML_VISION_TOKENS = {
    "<|vision_start|>": VSTART,
    "<|vision_end|>": VEND,
    "<|image_pad|>": IMAGE_ID,
    "<|video_pad|>": VIDEO_ID,
}
LLAVA_VISION_TOKENS = {
    "<|vision_start|>": VSTART,
    "<|vision_end|>": VEND,
    "<image>": IMAGE_ID,
    "<|video_pad|>": VIDEO_ID,
}
ONEVISION_VISION_TOKENS = {
    "<|vision_start|>": VSTART,
    "<|vision_end|>": VEND,
    "<image>": IMAGE_ID,
    "<video>": VIDEO_ID,
}
GEMMA3_VISION_TOKENS = {
    "<start_of_image>": VSTART,
    "<end_of_image>": VEND,
    "<image_soft_token>": IMAGE_ID,
    "<video>": VIDEO_ID,
    "\n\n": NEWLINES_ID,
}
INTERNVL_VISION_TOKENS = {"<img>": VSTART, "</img>": VEND, "<IMG_CONTEXT>": IMAGE_ID, "<video>": VIDEO_ID}
SMOLVLM_VISION_TOKENS = {
    "<fake_token_around_image>": SMOLVLM_FAKE,
    "<global-img>": SMOLVLM_GLOBAL,
    "<image>": IMAGE_ID,
    "<video>": VIDEO_ID,
    "<end_of_utterance>": SMOLVLM_END_OF_UTTERANCE,
    **{f"<row_{row}_col_{col}>": token for (row, col), token in SMOLVLM_ROW_COL.items()},
}

# ChatML with whitespace between words (the tokenizer splits on whitespace; special tokens split themselves).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|> ' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '%(image)s ' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] + ' ' }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|> assistant\n' }}{% endif %}"
)


def tiny_chat_tokenizer(arch: str) -> PreTrainedTokenizerFast:
    """`tiny_tokenizer`'s vocabulary plus ChatML tokens and `arch`'s image placeholder names, all ids < VOCAB.

    Chat and vision tokens are registered as special tokens, so `<|image_pad|><|image_pad|>` (how the processors
    expand placeholders, with no spaces) splits into single tokens. Left padding, `<pad>` = 0.
    """
    tiny = TINY_ARCHITECTURES[arch]
    vision = tiny.vision_tokens
    names = list(vision)
    return _word_level_tokenizer(
        {"<|im_start|>": IM_START, "<|im_end|>": IM_END, **ROLE_TOKENS, **vision},
        special_tokens=["<|im_start|>", "<|im_end|>", *names],
        extra_special_tokens=tiny.special_token_names(*names),
    )


def tiny_processor(arch: str, **image_processor_kwargs) -> ProcessorMixin:
    """Stock-logic processor for the tiny `arch` model (`qwen2_5_vl`, `qwen3_vl`, `llava`, `llava_next`, `internvl`,
    `smolvlm`).

    `processor.apply_chat_template(messages, add_generation_prompt=...)` renders a ChatML-style prompt with the
    architecture's image placeholder; `processor(text=..., images=..., return_tensors="pt", padding=True)` expands
    it to `image_token_id` (60) tokens and returns exactly the model's inputs. Image sizes the tiny towers see:

    - qwen2_5_vl: resized to multiples of 4 px with 16 * 16 <= h * w <= 24 * 24 (a 16 x 16 image -> 4 x 4 merged
      tokens, 32 x 32 -> 24 x 24 px -> 6 x 6 tokens); any sizes mix in one batch. qwen3_vl: the same.
    - llava: shortest edge resized to 8, centre-cropped to 8 x 8 -> 16 tokens.
    - llava_next: anyres over the pinpoints of `tiny_llava_next` with 8 x 8 tiles.
    - internvl: one 8 x 8 tile -> 4 tokens between `<img>` / `</img>` (58 / 59); pass `max_patches=n` for dynamic
      tiling (n tiles plus a thumbnail when n > 1).
    - smolvlm: longest edge resized to 16, split into 8 x 8 views (up to 2 x 2) plus a global view, 4 tokens each,
      each framed by `<fake_token_around_image>` (58) and a `<row_r_col_c>` (45..53) / `<global-img>` (59) tag; pass
      `do_resize=False` to split at the image's own size (an image of at most 8 x 8 px is not split).
    - gemma3: resized to 16 x 16 -> 16 soft tokens between `<start_of_image>` / `<end_of_image>` (58 / 59), framed by
      "\n\n" (57); `processor(..., do_pan_and_scan=True, pan_and_scan_min_crop_size=8)` adds a block per crop.

    `image_processor_kwargs` override the image processor's settings above.
    """
    tiny = TINY_ARCHITECTURES[arch]
    chat_template = CHAT_TEMPLATE.replace("%(image)s", tiny.placeholder)
    return tiny.processor(tiny_chat_tokenizer(arch), chat_template, image_processor_kwargs)


def _qwen2_5_vl_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = dict(
        patch_size=2, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 16 * 16, "longest_edge": 24 * 24}
    )
    image_processor = Qwen2VLImageProcessorPil(**{**settings, **overrides})
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=chat_template)


def _qwen3_vl_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    # Qwen3-VL checkpoints ship the Qwen2-VL image processor (patch 16 there); its video processor needs torchvision.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    settings = dict(
        patch_size=2, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 16 * 16, "longest_edge": 24 * 24}
    )
    image_processor = Qwen2VLImageProcessorPil(**{**settings, **overrides})
    return ImageOnlyQwen3VLProcessor(image_processor, tokenizer, chat_template=chat_template)


class _PrecomputedVideoProcessor:
    """Stands in for `Qwen3VLVideoProcessor` (torchvision): returns given pixels, grid and frame timing unchanged."""

    merge_size = 2
    temporal_patch_size = 2

    def __init__(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor, metadata) -> None:
        self.outputs = {"pixel_values_videos": pixel_values_videos, "video_grid_thw": video_grid_thw}
        self.metadata = metadata

    def __call__(self, videos, **kwargs):
        return {**self.outputs, "video_metadata": self.metadata}


def tiny_qwen3_vl_video_inputs(
    frames: int = 4, height: int = 4, width: int = 6, fps: float = 2.0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A Qwen3-VL video prompt laid out by the stock `Qwen3VLProcessor`: `frames` frames (temporal patch 2) of
    `height` x `width` patches, each frame group preceded by its text timestamp `<t seconds>` and framed by vision
    start / end tokens. Only the pixels are made here (the video processor needs torchvision); the text expansion,
    `mm_token_type_ids` and padding are the stock processor's. The tiny tokenizer reads each timestamp as text words.
    """
    from transformers.video_utils import VideoMetadata

    generator = torch.Generator().manual_seed(seed)
    grid_t = frames // 2
    processor = tiny_processor("qwen3_vl")
    processor.video_processor = _PrecomputedVideoProcessor(
        torch.randn(grid_t * height * width, 3 * 2 * 2 * 2, generator=generator),
        torch.tensor([[grid_t, height, width]]),
        [VideoMetadata(total_num_frames=frames, fps=fps, frames_indices=list(range(frames)))],
    )
    prefix, suffix = (" ".join(WORDS[token - TEXT_TOKENS[0]] for token in _text(seed + n, 3 + n)) for n in (0, 1))
    text = f"<s> {prefix} <|vision_start|><|video_pad|><|vision_end|> {suffix}"
    video = torch.zeros(frames, 2 * height, 2 * width, 3, dtype=torch.uint8)  # never read: the stub has the pixels
    return on_test_device(dict(processor(text=[text], videos=[video], return_tensors="pt")))


# CLIP's CLS is one additional token, dropped again by the "default" strategy.
LLAVA_PROCESSOR_SETTINGS = dict(
    patch_size=2, vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1
)


def _llava_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    settings = dict(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    image_processor = CLIPImageProcessorPil(**{**settings, **overrides})
    return LlavaProcessor(image_processor, tokenizer, chat_template=chat_template, **LLAVA_PROCESSOR_SETTINGS)


def _llava_next_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    settings = dict(
        size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8}, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS
    )
    image_processor = LlavaNextImageProcessorPil(**{**settings, **overrides})
    return LlavaNextProcessor(image_processor, tokenizer, chat_template=chat_template, **LLAVA_PROCESSOR_SETTINGS)


def _llava_onevision_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    settings = dict(size={"height": 8, "width": 8}, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS)
    image_processor = LlavaOnevisionImageProcessorPil(**{**settings, **overrides})
    # The stock one needs a video processor, which needs torchvision. SigLIP has no CLS: 16 tokens per 8 x 8 view.
    return ImageOnlyLlavaOnevisionProcessor(
        image_processor,
        tokenizer,
        num_image_tokens=16,
        vision_feature_select_strategy="full",
        chat_template=chat_template,
        vision_aspect_ratio=ONEVISION_ASPECT_RATIO,
    )


def _internvl_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    settings = dict(size={"height": 8, "width": 8}, crop_to_patches=True, min_patches=1, max_patches=1)
    image_processor = GotOcr2ImageProcessorPil(**{**settings, **overrides})
    return ImageOnlyInternVLProcessor(image_processor, tokenizer, image_seq_length=4, chat_template=chat_template)


def _smolvlm_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    # SmolVLMProcessor needs `num2words` (for its video prompts) at construction; Idefics3Processor, its parent, writes
    # the identical image prompt (framing tokens, row/col tags, global view) and needs nothing more.
    from transformers import Idefics3Processor
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    settings = dict(size={"longest_edge": 16}, max_image_size={"longest_edge": 8}, do_image_splitting=True)
    image_processor = SmolVLMImageProcessorPil(**{**settings, **overrides})
    return Idefics3Processor(image_processor, tokenizer, image_seq_len=SMOLVLM_VIEW_TOKENS, chat_template=chat_template)


def _gemma3_processor(tokenizer, chat_template, overrides) -> ProcessorMixin:
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    # Pan and scan is a call-time setting (`do_pan_and_scan=True, pan_and_scan_min_crop_size=8` for these sizes):
    # the processor's own defaults override the image processor's.
    image_processor = Gemma3ImageProcessorPil(**{"size": {"height": 16, "width": 16}, **overrides})
    return Gemma3Processor(
        image_processor, tokenizer, chat_template=chat_template, image_seq_length=GEMMA3_TOKENS_PER_IMAGE
    )


def _gemma3_names(start, end, image, video, newlines) -> dict[str, str]:
    return dict(boi_token=start, eoi_token=end, image_token=image)


def _image_and_video_names(start, end, image, video, *_) -> dict[str, str]:
    return dict(image_token=image, video_token=video)


def _smolvlm_names(fake, global_image, image, video, end_of_utterance, *_) -> dict[str, str]:
    return dict(
        image_token=image,
        video_token=video,
        fake_image_token=fake,
        global_image_token=global_image,
        end_of_utterance_token=end_of_utterance,
    )


def _internvl_names(start, end, image, video) -> dict[str, str]:
    return dict(start_image_token=start, end_image_token=end, context_image_token=image, video_token=video)


def _no_text_inputs(input_ids):
    return {}


def _qwen2_5_vl_text_inputs(input_ids):
    return {"mm_token_type_ids": (input_ids == IMAGE_ID).int()}


@dataclass(frozen=True)
class TinyArchitecture:
    """Everything the tests need to know about one architecture's tiny model: one entry of `TINY_ARCHITECTURES`.

    build(attn_implementation) -> the tiny stock model.
    image_sizes: sizes to mix within one batch (arch-specific meaning: patches, pixels or tiles).
    image_block(height, width, generator) -> (placeholder ids of one image, its pixel values, its extras).
    batch_images(pixel values, extras per image) -> the batch's vision inputs, as the stock processor stacks them.
    batch_images also finds `sample` (the image's row) and `num_samples` (the batch size) in each image's extras.
    text_inputs(input_ids) -> per-token extras the processor adds (e.g. Qwen's `mm_token_type_ids`).
    image_token_counts(input_ids (B, L)) -> placeholder tokens of each image, row-major: the unit of the budget.
    vision_tokens: {name: id} of (vision start, vision end, image, video[, more]) in the chat tokenizer.
    special_token_names(start, end, image, video[, more]) -> the tokenizer's named special tokens.
    image_block_takes_sample_count: `image_block` takes a fourth argument, the number of images in its sample
    (LLaVA-OneVision lays out an image alone in its sample anyres, and each of several as its base view only).
    placeholder: the image placeholder as the processor expects it in the rendered chat text.
    processor(tokenizer, chat_template, image processor overrides) -> the stock-logic processor.
    positions(model, inputs) -> the unpruned sequence's positions, by the stock code ((B, L), or (3, B, L) M-RoPE).
    """

    build: Callable[[str], PreTrainedModel]
    image_sizes: list[tuple[int, int]]
    image_block: Callable[[int, int, torch.Generator], tuple[list[int], torch.Tensor, dict]]
    batch_images: Callable[[list[torch.Tensor], list[dict]], dict[str, torch.Tensor]]
    vision_tokens: dict[str, int]
    placeholder: str
    processor: Callable[[PreTrainedTokenizerFast, str, dict], ProcessorMixin]
    text_inputs: Callable[[torch.Tensor], dict[str, torch.Tensor]] = _no_text_inputs
    image_block_takes_sample_count: bool = False
    special_token_names: Callable[..., dict[str, str]] = _image_and_video_names
    image_token_counts: Callable[[torch.Tensor], list[int]] = placeholder_run_lengths
    positions: Callable[[PreTrainedModel, dict[str, torch.Tensor]], torch.Tensor] = _mask_positions


# Adding an architecture to the test suite is one entry here.
TINY_ARCHITECTURES: dict[str, TinyArchitecture] = {
    "qwen2_5_vl": TinyArchitecture(
        build=tiny_qwen2_5_vl,
        image_sizes=[(4, 4), (4, 6), (6, 4)],
        image_block=_qwen2_5_vl_image,
        batch_images=_qwen2_5_vl_batch,
        text_inputs=_qwen2_5_vl_text_inputs,
        vision_tokens=CHATML_VISION_TOKENS,
        placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        processor=_qwen2_5_vl_processor,
        positions=_mrope_positions,
    ),
    "qwen3_vl": TinyArchitecture(
        build=tiny_qwen3_vl,
        image_sizes=[(4, 4), (4, 6), (6, 4)],
        image_block=_qwen2_5_vl_image,  # the same placeholder run and patch layout as Qwen2.5-VL
        batch_images=_qwen2_5_vl_batch,
        text_inputs=_qwen2_5_vl_text_inputs,
        vision_tokens=CHATML_VISION_TOKENS,
        placeholder="<|vision_start|><|image_pad|><|vision_end|>",
        processor=_qwen3_vl_processor,
        positions=_mrope_positions,
    ),
    "llava": TinyArchitecture(
        build=tiny_llava,
        image_sizes=[(8, 8)],
        image_block=_llava_image,
        batch_images=_concatenated_pixels,
        vision_tokens=LLAVA_VISION_TOKENS,
        placeholder="<image>",
        processor=_llava_processor,
    ),
    "llava_next": TinyArchitecture(
        build=tiny_llava_next,
        image_sizes=[(8, 8), (8, 14), (16, 10)],
        image_block=_llava_next_image,
        batch_images=_llava_next_batch,
        vision_tokens=LLAVA_VISION_TOKENS,
        placeholder="<image>",
        processor=_llava_next_processor,
    ),
    "llava_onevision": TinyArchitecture(
        build=tiny_llava_onevision,
        image_sizes=[(8, 8), (8, 14), (16, 10)],
        image_block=_llava_onevision_image,
        batch_images=_llava_onevision_batch,
        vision_tokens=ONEVISION_VISION_TOKENS,
        placeholder="<image>",
        processor=_llava_onevision_processor,
        image_block_takes_sample_count=True,
    ),
    "internvl": TinyArchitecture(
        build=tiny_internvl,
        image_sizes=[(1, 1), (2, 2), (3, 3)],
        image_block=_internvl_image,
        batch_images=_concatenated_pixels,
        vision_tokens=INTERNVL_VISION_TOKENS,
        placeholder="<IMG_CONTEXT>",
        processor=_internvl_processor,
        special_token_names=_internvl_names,
    ),
    "smolvlm": TinyArchitecture(
        build=tiny_smolvlm,
        image_sizes=[(1, 2), (0, 0), (2, 2)],
        image_block=_smolvlm_image,
        batch_images=_smolvlm_batch,
        vision_tokens=SMOLVLM_VISION_TOKENS,
        placeholder="<image>",
        processor=_smolvlm_processor,
        special_token_names=_smolvlm_names,
        image_token_counts=smolvlm_image_token_counts,
    ),
    "gemma3": TinyArchitecture(
        build=tiny_gemma3,
        image_sizes=[(0, 0), (2, 0)],  # (pan-and-scan crops, unused)
        image_block=_gemma3_image,
        batch_images=_concatenated_pixels,
        text_inputs=_gemma3_text_inputs,
        vision_tokens=GEMMA3_VISION_TOKENS,
        placeholder="<start_of_image>",
        processor=_gemma3_processor,
        special_token_names=_gemma3_names,
    ),
}
# Views of the table by what tests ask for.
BUILDERS = {name: tiny.build for name, tiny in TINY_ARCHITECTURES.items()}
IMAGE_SIZES = {name: tiny.image_sizes for name, tiny in TINY_ARCHITECTURES.items()}
IMAGE_PLACEHOLDER = {name: tiny.placeholder for name, tiny in TINY_ARCHITECTURES.items()}


def place_in_hf_cache(folder, repo_id: str, cache_dir, commit: str | None = None) -> str:
    """Copy a saved repo `folder` into `cache_dir` in the Hub cache's snapshot layout, as a download would leave it.

    `models--{org}--{name}/snapshots/{commit}/<files>` plus `refs/main` naming the commit, so that
    `from_pretrained(repo_id)` with `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE=cache_dir` finds it. Returns the commit.
    """
    import hashlib
    import shutil
    from pathlib import Path

    folder, cache_dir = Path(folder), Path(cache_dir)
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    root = cache_dir / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return commit
