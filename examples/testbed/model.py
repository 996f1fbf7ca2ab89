"""The testbed VLM: the stock Qwen2.5-VL architecture at a small size, a word-level tokenizer over the task vocabulary,
the stock (PIL-backend) image processor, and loading of the bundled trained model.

Geometry: 8 px patches merged 2 x 2 make one visual token per 16 x 16 px cell; task v2 images are drawn on that grid
(12-18 cells a side, 144-324 tokens), others are resized to sides that are multiples of 16 px (aspect kept).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from hf_tokenprune import testing
from hf_tokenprune.evaluate import build_batch as build_vqa_batch
from hf_tokenprune.evaluate import predict as predict_answers
from hf_tokenprune.modeling.repo_io import HUB_KWARGS
from hf_tokenprune.processing import ImageOnlyQwen2_5_VLProcessor, load_processor

from .tasks import MAX_PIXELS, MIN_PIXELS, TOKEN_PIXELS  # the processor's geometry, shared with the tasks

PATCH_SIZE = 8
MERGE_SIZE = 2
if PATCH_SIZE * MERGE_SIZE != TOKEN_PIXELS:
    raise AssertionError("one visual token must cover one task cell")
# The processor keeps any image whose sides are multiples of 16 px and whose area lies in [MIN_PIXELS, MAX_PIXELS]
# (task v2 images are drawn on the token grid, 12-18 cells a side); others are resized to the nearest such size.

DEFAULT_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_DIR = DEFAULT_DIR / "base"
# The learned selectors the bundle holds, in the order the recipe trains them (what was trained, not the registry:
# a method registered later has no bundled adapter).
BUNDLED_METHODS = ("visionselector", "questionselector", "autoselect", "reconstruction")
DEFAULT_ADAPTERS = {method: DEFAULT_DIR / method for method in BUNDLED_METHODS}
# The task the bundled VLM was trained on, and so the default of `demo`, `eval`, the Space and the lmms-eval task:
# default_model/ holds the task-v2 VLM of `runs/testbed-v5` (docs/testbed.md). Task v1 stays available (`--task v1`).
BUNDLED_TASK = "v2"

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
ROLES = ("system", "user", "assistant")
CAPTION_PROMPT = "describe the image"  # the VLM's pre-training task besides VQA (see pipeline.caption_record)
CHAT_TEMPLATE = testing.CHAT_TEMPLATE.replace("%(image)s", testing.IMAGE_PLACEHOLDER["qwen2_5_vl"])

# Sizes of the testbed VLM: small enough to train from scratch on 2 CPU cores; as in real VLMs the language model
# carries most of the prefill compute (so pruning shows in time to first token), the vision tower the smaller part.
VISION_SIZES = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2)
TEXT_HEAD_DIM = 32  # every width keeps 32-wide heads (M-RoPE's sections below are cut from it) and 2 KV heads


def check_text_width(width: int, argument: str = "text_width") -> None:
    """Refuse a language-model width that the 32-wide heads do not divide, naming `argument`."""
    if width < TEXT_HEAD_DIM or width % TEXT_HEAD_DIM:
        raise ValueError(f"`{argument}` must be a positive multiple of {TEXT_HEAD_DIM}, got {width}")


def text_sizes(width: int, layers: int) -> dict:
    """Language-model sizes of a testbed VLM `width` wide (a multiple of 32; FFN 4x as wide) and `layers` deep."""
    return dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // TEXT_HEAD_DIM,
        num_key_value_heads=2,
    )


# 128 wide: at 256 the demo's time to first token would shrink about 1.5x at budget 0.2 instead of 1.3x, but a VLM
# round trains 2.9x slower and the recipe no longer fits in 3 hours on 2 CPU cores (docs/testbed.md, "The width").
TEXT_SIZES = text_sizes(128, 5)


def testbed_tokenizer():
    """Word-level tokenizer: specials, chat and vision tokens, roles, then every word of the task vocabulary."""
    from .scenes import CLUTTER_KINDS
    from .tasks import VOCABULARY

    # Clutter kinds are words too: the vision tower's stage-1 head names every glyph in the language model's words.
    words = list(
        dict.fromkeys([*SPECIAL_TOKENS, *CHAT_TOKENS, *ROLES, *VOCABULARY, *CLUTTER_KINDS, *CAPTION_PROMPT.split()])
    )
    tokenizer = testing.word_level_tokenizer(
        {word: index for index, word in enumerate(words)},
        special_tokens=CHAT_TOKENS,
        extra_special_tokens=dict(image_token="<|image_pad|>", video_token="<|video_pad|>"),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def testbed_processor(tokenizer=None) -> ImageOnlyQwen2_5_VLProcessor:
    """The stock Qwen2.5-VL processor logic, images only (its video processor needs torchvision)."""
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=2,
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )
    tokenizer = tokenizer if tokenizer is not None else testbed_tokenizer()
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE)


def testbed_config(tokenizer, text_layers: int | None = None, text_width: int | None = None) -> Qwen2_5_VLConfig:
    """A small Qwen2.5-VL config whose special ids come from `tokenizer`; a language model of `text_layers` decoder
    layers, `text_width` wide (defaults: `TEXT_SIZES`'s)."""
    if text_width is not None:
        check_text_width(text_width)
    sizes = text_sizes(
        TEXT_SIZES["hidden_size"] if text_width is None else text_width,
        TEXT_SIZES["num_hidden_layers"] if text_layers is None else text_layers,
    )
    ids = tokenizer.convert_tokens_to_ids
    half = TEXT_HEAD_DIM // 2  # M-RoPE splits the rotary half-dimension into (time, height, width) sections
    config = Qwen2_5_VLConfig(
        text_config=dict(
            sizes,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [half // 2, half // 4, half // 4],
            },
            pad_token_id=ids("<pad>"),
            bos_token_id=ids("<s>"),
            eos_token_id=ids("<|im_end|>"),
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            VISION_SIZES,
            patch_size=PATCH_SIZE,
            spatial_merge_size=MERGE_SIZE,
            temporal_patch_size=2,
            window_size=4 * TOKEN_PIXELS,  # 4 x 4 tokens per attention window
            out_hidden_size=sizes["hidden_size"],
            fullatt_block_indexes=[1],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    return config


def new_testbed_model(seed: int = 0, text_layers: int | None = None, text_width: int | None = None):
    """(freshly initialised testbed VLM whose language model has `text_layers` decoder layers and is `text_width`
    wide (defaults: `TEXT_SIZES`'s), its processor)."""
    processor = testbed_processor()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(testbed_config(processor.tokenizer, text_layers, text_width))
    generation = model.generation_config
    generation.pad_token_id = processor.tokenizer.pad_token_id
    generation.eos_token_id = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation.do_sample = False
    return model, processor


def load_testbed(path_or_repo_id: str | os.PathLike = DEFAULT_MODEL_DIR, **kwargs):
    """(testbed base model in eval mode, processor) from a saved folder or Hub id (default: the bundled model)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path_or_repo_id, **kwargs).eval()
    hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
    return model, load_processor(path_or_repo_id, **hub_kwargs)


def messages_for(question: str, answer: str | None = None) -> list[dict[str, Any]]:
    """Chat messages: the question, the image and the question again from the user, then (for training) the answer.

    See `pipeline.conversation_record` for why; training records use the same layout.
    """
    content = [{"type": "text", "text": question}, {"type": "image"}, {"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def build_batch(processor, images: list, questions: list[str]) -> BatchFeature:
    """Model inputs for a batch of (image, question) prompts in the testbed's layout (`messages_for`), ending in the
    assistant's turn (left padding)."""
    return build_vqa_batch(processor, images, questions, messages_for)


def predict(
    model, processor, images: list, questions: list[str], batch_size: int = 32, progress=None, **generate_kwargs
):
    """`hf_tokenprune.evaluate.predict` with the testbed's prompt layout (`messages_for`, unless given): greedy
    one-word answers, kept and total visual tokens per example."""
    generate_kwargs.setdefault("messages_for", messages_for)
    return predict_answers(model, processor, images, questions, batch_size, progress, **generate_kwargs)
