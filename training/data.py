"""LLaVA-style conversation records and the collator that turns them into model inputs with labels.

A record: `{"image": "a.jpg"}` or `{"images": ["a.jpg", ...]}` (or neither, for text-only), plus
`"conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}]`,
with one `<image>` placeholder per image, in order. Paths resolve against `image_folder`; the collator also takes
records built in memory whose images are PIL images instead of paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from transformers.utils import logging

if TYPE_CHECKING:
    import datasets

logger = logging.get_logger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
BAD_IMAGE_POLICIES = ("skip", "error")


def record_images(record: dict[str, Any]) -> list[str]:
    images = record.get("images")
    if images is None:
        images = [] if record.get("image") is None else [record["image"]]
    if isinstance(images, str):
        images = [images]
    return list(images)


def resolve_image(path: str, image_folder: str | os.PathLike | None) -> Path:
    path = Path(path)
    return path if path.is_absolute() or image_folder is None else Path(image_folder) / path


def _record_problem(record: dict[str, Any], image_folder) -> str | None:
    """None if the record is usable, else what is wrong (naming the image path)."""
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return "no `conversations` list"
    for turn in conversations:
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            return f"a turn is not {{'from': one of {sorted(ROLES)}, 'value': str}}: {turn!r}"
    if not any(ROLES[turn["from"]] == "assistant" for turn in conversations):
        return "no assistant ('gpt') turn to learn from"
    images = record_images(record)
    placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in conversations)
    if placeholders != len(images):
        return f"{placeholders} `<image>` placeholders for {len(images)} images"
    for image in images:
        path = resolve_image(image, image_folder)
        try:
            with Image.open(path) as handle:
                handle.verify()
        except (OSError, SyntaxError, ValueError) as error:
            return f"image {str(path)!r} is missing or unreadable ({type(error).__name__}: {error})"
    return None


def load_conversation_records(
    source: str | os.PathLike | Sequence[dict[str, Any]],
    image_folder: str | os.PathLike | None = None,
    on_bad_image: str = "skip",
) -> datasets.Dataset:
    """Read records from a `.json` (a list) / `.jsonl` file, a `datasets.Dataset` or a list of dicts, and check them.

    Every image is opened once here. A record with a missing or unreadable image (or a placeholder count
    that does not match its images) is reported with its index and path, then skipped
    (`on_bad_image="skip"`) or raises ValueError listing all of them (`"error"`).
    Returns a `datasets.Dataset` with columns `images` (list of str) and `conversations`.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"`on_bad_image` must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"`train_file` {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".jsonl":
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`train_file` {str(path)!r} is not valid JSON / JSONL: {error}") from error
        if not isinstance(records, list):
            raise ValueError(f"`train_file` {str(path)!r} must hold a list of records")
    else:
        records = list(source)
    kept, problems = [], []
    for index, record in enumerate(records):
        problem = _record_problem(record, image_folder) if isinstance(record, dict) else "not a dict"
        if problem is None:
            kept.append({"images": record_images(record), "conversations": record["conversations"]})
        else:
            problems.append(f"record {index}: {problem}")
    if problems:
        report = "\n  ".join(problems)
        if on_bad_image == "error":
            raise ValueError(f"{len(problems)} bad training records (on_bad_image='error'):\n  {report}")
        logger.warning(f"skipping {len(problems)} bad training records:\n  {report}")
    if not kept:
        raise ValueError("no usable training records")
    import datasets  # deferred: pyarrow is slow to import and only training needs it

    return datasets.Dataset.from_list(kept)


def conversation_messages(conversations: list[dict[str, str]]) -> list[dict[str, Any]]:
    """LLaVA turns -> transformers chat messages; `<image>` becomes an `{"type": "image"}` content item."""
    messages = []
    for turn in conversations:
        content = []
        for index, text in enumerate(turn["value"].split(IMAGE_PLACEHOLDER)):
            if index:
                content.append({"type": "image"})
            if text.strip():
                content.append({"type": "text", "text": text.strip()})
        messages.append({"role": ROLES[turn["from"]], "content": content})
    return messages


class TokenPruneDataCollator:
    """Conversation records -> processor inputs + `labels` set only on the assistant answers.

    Uses the model's own processor and chat template. An answer's tokens are found by rendering the
    conversation up to the answer (with the generation prompt) and up to the end of the answer, and
    processing both with the images they contain: their lengths bound the answer, end-of-turn tokens
    included (so the model learns to stop). This needs the processor's tokenisation of a prefix to be a
    prefix of the full tokenisation, which holds for chat templates whose turns end in special tokens;
    it is checked, and a processor that breaks it gets a clear error.
    """

    def __init__(self, processor, image_folder: str | os.PathLike | None = None) -> None:
        if (
            getattr(processor, "chat_template", None) is None
            and getattr(getattr(processor, "tokenizer", None), "chat_template", None) is None
        ):
            raise ValueError("`processing_class` has no chat template; set `processor.chat_template`")
        self.processor = processor
        self.image_folder = image_folder

    def _load_image(self, path: str | Image.Image) -> Image.Image:
        if isinstance(path, Image.Image):  # records built in memory (e.g. generated on the fly) carry the image
            return path.convert("RGB")
        with Image.open(resolve_image(path, self.image_folder)) as handle:
            return handle.convert("RGB")

    def _process(self, texts: list[str], images: list[list[Image.Image]]) -> dict[str, torch.Tensor]:
        # Images per sample: every processor takes that form, and some (Gemma 3's) take no other.
        kwargs = {"images": images} if any(images) else {}
        return self.processor(text=texts, return_tensors="pt", padding=True, **kwargs)

    def _answer_spans(self, messages, images, full_ids: list[int]) -> list[tuple[int, int]]:
        """The [start, end) span of every answer in `full_ids`, the whole conversation's (unpadded) token ids."""
        render = self.processor.apply_chat_template
        spans, images_seen = [], 0
        for index, message in enumerate(messages):
            images_seen += sum(item.get("type") == "image" for item in message["content"])
            if message["role"] != "assistant":
                continue
            bounds = []
            for upto, generation_prompt in ((index, True), (index + 1, False)):
                if upto == len(messages) and not generation_prompt:
                    bounds.append(len(full_ids))  # the whole conversation: already processed
                    continue
                text = render(messages[:upto], tokenize=False, add_generation_prompt=generation_prompt)
                ids = self._process([text], [images[:images_seen]])["input_ids"][0].tolist()
                if ids != full_ids[: len(ids)]:
                    raise ValueError(
                        "the processor's tokens for a conversation prefix are not a prefix of the whole "
                        "conversation's tokens, so the answer tokens cannot be located for `labels`"
                    )
                bounds.append(len(ids))
            spans.append((bounds[0], bounds[1]))
        return spans

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts, images, per_record = [], [], []
        for record in records:
            messages = conversation_messages(record["conversations"])
            record_images_ = [self._load_image(path) for path in record_images(record)]
            texts.append(self.processor.apply_chat_template(messages, tokenize=False))
            images.append(record_images_)
            per_record.append((messages, record_images_))
        batch = dict(self._process(texts, images))
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(input_ids, -100)
        for row, (messages, record_images_) in enumerate(per_record):
            # The row's real tokens (left or right padding around them) are the whole conversation's ids.
            real = torch.nonzero(attention_mask[row]).flatten()
            offset = int(real[0]) if len(real) else 0
            full_ids = input_ids[row, offset : offset + len(real)].tolist()
            for start, end in self._answer_spans(messages, record_images_, full_ids):
                labels[row, offset + start : offset + end] = input_ids[row, offset + start : offset + end]
        batch["labels"] = labels
        return batch
