"""The testbed task's lmms-eval functions (named by `_default_template_yaml`): the prompt and the metric of
`hf-tokenprune eval`, so both report the same accuracy on the same examples."""

from __future__ import annotations

from typing import Any

from hf_tokenprune.evaluate import first_word
from hf_tokenprune_testbed.model import messages_for


def doc_to_visual(doc: dict[str, Any]) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict[str, Any]) -> str:
    return doc["question"]


def doc_to_messages(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """`messages_for(question)` (question, image, question) with the image itself in its image item, as lmms-eval
    carries it."""
    messages = messages_for(doc_to_text(doc))
    images = iter(doc_to_visual(doc))
    for message in messages:
        message["content"] = [
            {**item, "url": next(images)} if item["type"] == "image" else item for item in message["content"]
        ]
    return messages


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the answer's first word with the one-word answer (`hf_tokenprune.evaluate`'s accuracy)."""
    return {"exact_match": float(first_word(results[0]) == doc["answer"])}
