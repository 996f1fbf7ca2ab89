"""Processors that need no torchvision, and loading a saved processor either way.

The stock `Qwen2_5_VLProcessor`, `Qwen3VLProcessor`, `InternVLProcessor` and `LlavaOnevisionProcessor` refuse to build
without a video processor, and the video processors need torchvision. The image-only subclasses here keep the stock logic for images;
`load_processor` loads one where it was saved and `AutoProcessor` everywhere else.
"""

from __future__ import annotations

import json
import os

from transformers import (
    AutoProcessor,
    InternVLProcessor,
    LlavaOnevisionProcessor,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen3VLProcessor,
)
from transformers.utils import cached_file


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """The stock Qwen2.5-VL processor without its video processor (which needs torchvision); images only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """The stock Qwen3-VL processor without its video processor (which needs torchvision); images only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """The stock InternVL processor without its video processor (which needs torchvision); images only."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length=256, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, image_seq_length, chat_template, **kwargs)


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """The stock LLaVA-OneVision processor without its video processor (which needs torchvision); images only."""

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        num_image_tokens=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        video_token="<video>",
        vision_aspect_ratio="anyres_max_9",
        **kwargs,
    ):
        # Named here (not left to **kwargs) so that `save_pretrained` writes them and `from_pretrained` restores them.
        super().__init__(
            image_processor,
            tokenizer,
            None,
            num_image_tokens,
            vision_feature_select_strategy,
            chat_template,
            image_token,
            video_token,
            vision_aspect_ratio,
            **kwargs,
        )


IMAGE_ONLY_PROCESSORS = {
    cls.__name__: cls
    for cls in (
        ImageOnlyQwen2_5_VLProcessor,
        ImageOnlyQwen3VLProcessor,
        ImageOnlyInternVLProcessor,
        ImageOnlyLlavaOnevisionProcessor,
    )
}


def load_processor(path_or_repo_id: str | os.PathLike, **hub_kwargs) -> ProcessorMixin:
    """The processor saved at `path_or_repo_id` (a folder or Hub id): an image-only one where it was saved as one,
    else whatever `AutoProcessor` finds. `hub_kwargs` (revision, cache_dir, ...) say where to fetch files."""
    config_file = cached_file(
        path_or_repo_id, "processor_config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs
    )
    if config_file is not None:
        with open(config_file, encoding="utf-8") as handle:
            image_only = IMAGE_ONLY_PROCESSORS.get(json.load(handle).get("processor_class"))
        if image_only is not None:
            return image_only.from_pretrained(path_or_repo_id, **hub_kwargs)
    return AutoProcessor.from_pretrained(path_or_repo_id, **hub_kwargs)


__all__ = [
    "ImageOnlyInternVLProcessor",
    "ImageOnlyLlavaOnevisionProcessor",
    "ImageOnlyQwen2_5_VLProcessor",
    "ImageOnlyQwen3VLProcessor",
    "load_processor",
]
