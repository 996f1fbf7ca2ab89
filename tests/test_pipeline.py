"""`transformers.pipeline("image-text-to-text")` with a pruned model: no "not supported" error, the pruned answer."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, pipeline
from transformers.utils import logging as transformers_logging

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.testing import BUILDERS, tiny_processor

BUDGET = 0.25


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_errors():
    handler = Records()
    logger = transformers_logging.get_logger("transformers")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(16, 16, 3) * 255).astype("uint8"))


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava"])
def test_pipeline_runs_the_pruned_model_without_an_error(arch, transformers_errors):
    processor = tiny_processor(arch)
    pruned = get_pruned_model(BUILDERS[arch](), TokenPruneConfig(method="uniform"))
    planned = []
    plan_pruning = pruned.plan_pruning
    pruned.plan_pruning = lambda *args, **kwargs: planned.append(args[3]) or plan_pruning(*args, **kwargs)
    messages = [{"role": "user", "content": [{"type": "image", "image": image(0)}, {"type": "text", "text": "a red"}]}]

    answer = pipeline("image-text-to-text", model=pruned, processor=processor)(
        text=messages, generate_kwargs={"prune_budget": BUDGET, "max_new_tokens": 4}, return_full_text=False
    )[0]["generated_text"]

    assert not [message for message in transformers_errors if "not supported" in message]
    assert planned == [BUDGET]  # the budget reached the pruning step
    # Oracle: the same prompt through the processor and `generate` directly.
    inputs = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a red"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    batch = processor(text=[inputs], images=[image(0)], return_tensors="pt")
    output = pruned.generate(**batch, prune_budget=BUDGET, max_new_tokens=4)
    expected = processor.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert answer.strip() == expected.strip() != ""  # the pipeline keeps a leading space of the decoded text


def test_listing_for_pipelines_leaves_the_auto_classes_stock():
    base = BUILDERS["llava"]()
    assert AutoModelForImageTextToText._model_mapping[type(base.config)] is type(base)
