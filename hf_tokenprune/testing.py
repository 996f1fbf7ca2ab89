"""Tiny random vision-language models built from configs, model inputs built directly, and a tiny tokenizer.

For tests, demos and the README snippet: nothing here downloads anything.

As in the `transformers` model testers: hidden size 32, two layers. The stock processors of
Qwen2.5-VL and InternVL need torchvision (not installable here), so inputs are assembled by hand
exactly as the processors lay them out: placeholder tokens at the image positions, pixel tensors
of the right shape, and the per-model extras (`image_grid_thw`, `mm_token_type_ids`, `image_sizes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)

from .processing import ImageOnlyInternVLProcessor, ImageOnlyQwen2_5_VLProcessor  # re-exported for the tests

VOCAB = 64
PAD, BOS, EOS = 0, 1, 2
TEXT_TOKENS = range(8, 40)  # ordinary text ids; specials live above 40
IMAGE_ID, VIDEO_ID, VSTART, VEND = 60, 61, 58, 59

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


def tiny_qwen2_5_vl(attn_implementation: str = "eager") -> Qwen2_5_VLForConditionalGeneration:
    config = Qwen2_5_VLConfig(
        text_config=dict(
            TEXT_CONFIG, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}
        ),
        vision_config=dict(
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
        ),
        image_token_id=IMAGE_ID,
        video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )
    return _build(Qwen2_5_VLForConditionalGeneration, config, attn_implementation)


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


def tiny_llava_next(attn_implementation: str = "eager") -> LlavaNextForConditionalGeneration:
    config = LlavaNextConfig(
        text_config=dict(TEXT_CONFIG, model_type="llama"),
        vision_config=dict(CLIP_VISION_CONFIG),
        image_token_index=IMAGE_ID,
        image_grid_pinpoints=[[8, 8], [8, 16], [16, 8], [16, 16]],
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    return _build(LlavaNextForConditionalGeneration, config, attn_implementation)


def tiny_internvl(attn_implementation: str = "eager") -> InternVLForConditionalGeneration:
    config = InternVLConfig(
        text_config=dict(TEXT_CONFIG, model_type="qwen2"),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=[8, 8],
            patch_size=[2, 2],
        ),
        image_token_id=IMAGE_ID,
        image_seq_length=4,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return _build(InternVLForConditionalGeneration, config, attn_implementation)


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
    return model


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
    rows, pixel_values, extras = [], [], {"image_grid_thw": [], "image_sizes": []}
    for sample in samples:
        row = [BOS] + sample.prefix
        for image_index, (height, width) in enumerate(sample.images):
            generator = torch.Generator().manual_seed(seed + 1000 * sample.seed + image_index)
            row += _image_block(arch, height, width, generator, pixel_values, extras)
            row += sample.suffix[:1]
        row += sample.suffix
        rows.append(row)
    length = max(len(row) for row in rows)
    input_ids = torch.tensor([[PAD] * (length - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if pixel_values:
        if arch == "llava_next":
            inputs["pixel_values"] = torch.stack(_pad_crops(pixel_values))
            inputs["image_sizes"] = torch.tensor(extras["image_sizes"])
        elif arch == "qwen2_5_vl":
            inputs["pixel_values"] = torch.cat(pixel_values)
            inputs["image_grid_thw"] = torch.tensor(extras["image_grid_thw"])
        else:
            inputs["pixel_values"] = torch.cat(pixel_values)
    if arch == "qwen2_5_vl":
        inputs["mm_token_type_ids"] = (input_ids == IMAGE_ID).int()
    return inputs


def _image_block(arch, height, width, generator, pixel_values, extras) -> list[int]:
    if arch == "qwen2_5_vl":
        # (height, width) in patches of 2 px; 2 x 2 patches merge into one LLM token.
        pixel_values.append(torch.randn(height * width, 3 * 2 * 2 * 2, generator=generator))
        extras["image_grid_thw"].append([1, height, width])
        return [VSTART] + [IMAGE_ID] * (height * width // 4) + [VEND]
    if arch == "llava":
        pixel_values.append(torch.randn(1, 3, 8, 8, generator=generator))
        return [IMAGE_ID] * 16
    if arch == "internvl":
        # `height` tiles of 8 x 8 px, each 4 tokens after the 2 x 2 pixel shuffle.
        pixel_values.append(torch.randn(height, 3, 8, 8, generator=generator))
        return [VSTART] + [IMAGE_ID] * (4 * height) + [VEND]
    if arch == "llava_next":
        # (height, width) in pixels; anyres tiles of 8 px; base view + crops, unpadded, with row newlines.
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        pinpoints = [[8, 8], [8, 16], [16, 8], [16, 16]]
        num_crops = image_size_to_num_patches((height, width), pinpoints, 8)
        pixel_values.append(torch.randn(num_crops, 3, 8, 8, generator=generator))
        extras["image_sizes"].append([height, width])
        return [IMAGE_ID] * llava_next_token_count(height, width)
    raise ValueError(arch)


def llava_next_token_count(height: int, width: int) -> int:
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    rows, cols = get_anyres_image_grid_shape((height, width), [[8, 8], [8, 16], [16, 8], [16, 16]], 8)
    grid = torch.zeros(1, rows * 4, cols * 4)
    unpadded = unpad_image(grid, (height, width))
    return 16 + unpadded.shape[1] * (unpadded.shape[2] + 1)


def _pad_crops(pixel_values: list[torch.Tensor]) -> list[torch.Tensor]:
    most = max(p.shape[0] for p in pixel_values)
    return [torch.cat([p, p.new_zeros(most - p.shape[0], *p.shape[1:])]) for p in pixel_values]


def make_video_inputs(frames: int = 4, height: int = 4, width: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Qwen2.5-VL video prompt: `frames` frames (temporal patch 2), each `height` x `width` patches."""
    generator = torch.Generator().manual_seed(seed)
    grid_t = frames // 2
    tokens = grid_t * height * width // 4
    row = [BOS] + _text(seed, 3) + [VSTART] + [VIDEO_ID] * tokens + [VEND] + _text(seed + 1, 4)
    input_ids = torch.tensor([row])
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": torch.randn(grid_t * height * width, 3 * 2 * 2 * 2, generator=generator),
        "video_grid_thw": torch.tensor([[grid_t, height, width]]),
        "second_per_grid_ts": torch.tensor([1.0]),
        "mm_token_type_ids": (input_ids == VIDEO_ID).int() * 2,
    }


BUILDERS = {
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
    "internvl": tiny_internvl,
}

# Image sizes per architecture: different sizes within one batch wherever the architecture allows.
IMAGE_SIZES = {
    "qwen2_5_vl": [(4, 4), (4, 6), (6, 4)],
    "llava": [(8, 8)],
    "internvl": [(1, 1), (2, 2), (3, 3)],
    "llava_next": [(8, 8), (8, 14), (16, 10)],
}


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

# Image placeholder strings per architecture, as the stock processor expects them in the rendered text, and the
# ids 58..61 they occupy in that architecture's tokenizer (IMAGE_ID = 60 is every tiny model's image_token_id).
_VISION_TOKENS = {
    "qwen2_5_vl": {
        "<|vision_start|>": VSTART,
        "<|vision_end|>": VEND,
        "<|image_pad|>": IMAGE_ID,
        "<|video_pad|>": VIDEO_ID,
    },
    "llava": {"<|vision_start|>": VSTART, "<|vision_end|>": VEND, "<image>": IMAGE_ID, "<|video_pad|>": VIDEO_ID},
    "internvl": {"<img>": VSTART, "</img>": VEND, "<IMG_CONTEXT>": IMAGE_ID, "<video>": VIDEO_ID},
}
_VISION_TOKENS["llava_next"] = _VISION_TOKENS["llava"]
IMAGE_PLACEHOLDER = {
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava": "<image>",
    "llava_next": "<image>",
    "internvl": "<IMG_CONTEXT>",
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
    vision = _VISION_TOKENS[arch]
    names = list(vision)
    named = (
        dict(start_image_token=names[0], end_image_token=names[1], context_image_token=names[2], video_token=names[3])
        if arch == "internvl"
        else dict(image_token=names[2], video_token=names[3])
    )
    return _word_level_tokenizer(
        {"<|im_start|>": IM_START, "<|im_end|>": IM_END, **ROLE_TOKENS, **vision},
        special_tokens=["<|im_start|>", "<|im_end|>", *names],
        extra_special_tokens=named,
    )


def tiny_processor(arch: str, **image_processor_kwargs) -> ProcessorMixin:
    """Stock-logic processor for the tiny `arch` model (`qwen2_5_vl`, `llava`, `llava_next`, `internvl`).

    `processor.apply_chat_template(messages, add_generation_prompt=...)` renders a ChatML-style prompt with the
    architecture's image placeholder; `processor(text=..., images=..., return_tensors="pt", padding=True)` expands
    it to `image_token_id` (60) tokens and returns exactly the model's inputs. Image sizes the tiny towers see:

    - qwen2_5_vl: resized to multiples of 4 px with 16 * 16 <= h * w <= 24 * 24 (a 16 x 16 image -> 4 x 4 merged
      tokens, 32 x 32 -> 24 x 24 px -> 6 x 6 tokens); any sizes mix in one batch.
    - llava: shortest edge resized to 8, centre-cropped to 8 x 8 -> 16 tokens.
    - llava_next: anyres over the pinpoints of `tiny_llava_next` with 8 x 8 tiles.
    - internvl: one 8 x 8 tile -> 4 tokens between `<img>` / `</img>` (58 / 59); pass `max_patches=n` for dynamic
      tiling (n tiles plus a thumbnail when n > 1).

    `image_processor_kwargs` override the image processor's settings above.
    """
    tokenizer = tiny_chat_tokenizer(arch)
    chat_template = CHAT_TEMPLATE.replace("%(image)s", IMAGE_PLACEHOLDER[arch])
    if arch == "qwen2_5_vl":
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        settings = dict(
            patch_size=2, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 16 * 16, "longest_edge": 24 * 24}
        )
        image_processor = Qwen2VLImageProcessorPil(**{**settings, **image_processor_kwargs})
        return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=chat_template)
    # CLIP's CLS is one additional token, dropped again by the "default" strategy.
    llava_settings = dict(
        patch_size=2, vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1
    )
    if arch == "llava":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        settings = dict(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
        image_processor = CLIPImageProcessorPil(**{**settings, **image_processor_kwargs})
        return LlavaProcessor(image_processor, tokenizer, chat_template=chat_template, **llava_settings)
    if arch == "llava_next":
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        settings = dict(
            size={"shortest_edge": 8},
            crop_size={"height": 8, "width": 8},
            image_grid_pinpoints=[[8, 8], [8, 16], [16, 8], [16, 16]],
        )
        image_processor = LlavaNextImageProcessorPil(**{**settings, **image_processor_kwargs})
        return LlavaNextProcessor(image_processor, tokenizer, chat_template=chat_template, **llava_settings)
    if arch == "internvl":
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        settings = dict(size={"height": 8, "width": 8}, crop_to_patches=True, min_patches=1, max_patches=1)
        image_processor = GotOcr2ImageProcessorPil(**{**settings, **image_processor_kwargs})
        return ImageOnlyInternVLProcessor(image_processor, tokenizer, image_seq_length=4, chat_template=chat_template)
    raise ValueError(f"no tiny processor for {arch!r}")


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
