"""Conversation records and the collator: loading, bad-image handling, labels only on the assistant's answers."""

from __future__ import annotations

import json
import logging

import datasets
import pytest
import torch
from PIL import Image
from test_training import write_records

from hf_tokenprune import TokenPruneDataCollator, load_conversation_records
from hf_tokenprune.testing import BUILDERS, tiny_processor


def test_json_jsonl_lists_and_datasets_load_alike(tmp_path):
    path = write_records(tmp_path)
    records = json.loads(path.read_text())
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(record) for record in records))
    loaded = [
        load_conversation_records(path, tmp_path),
        load_conversation_records(jsonl, tmp_path),
        load_conversation_records(records, tmp_path),
        load_conversation_records(datasets.Dataset.from_list(records), tmp_path),
    ]
    for dataset in loaded:
        assert dataset.column_names == ["images", "conversations"]
        assert [row["images"] for row in dataset] == [[record["image"]] for record in records]
        assert [row["conversations"] for row in dataset] == [record["conversations"] for record in records]


def test_bad_images_are_reported_by_path_and_skipped_or_rejected(tmp_path, caplog):
    path = write_records(tmp_path)
    records = json.loads(path.read_text())
    (tmp_path / "broken.png").write_bytes(b"not a png")
    records[1]["image"] = "missing.png"
    records[2]["image"] = "broken.png"
    records.append({"images": ["image0.png", "image0.png"], "conversations": records[0]["conversations"]})
    with caplog.at_level(logging.WARNING):
        kept = load_conversation_records(records, tmp_path, on_bad_image="skip")
    assert len(kept) == 2
    assert "missing.png" in caplog.text and "broken.png" in caplog.text and "2 images" in caplog.text
    with pytest.raises(ValueError) as error:
        load_conversation_records(records, tmp_path, on_bad_image="error")
    assert "missing.png" in str(error.value) and "broken.png" in str(error.value) and "record 4" in str(error.value)
    with pytest.raises(ValueError, match="on_bad_image"):
        load_conversation_records(records, tmp_path, on_bad_image="ignore")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_conversation_records(tmp_path / "nothing.json")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "llava", "internvl"])
def test_labels_cover_exactly_the_assistant_answers(arch, tmp_path):
    """Oracle: the decoded labelled tokens are each answer followed by the end-of-turn token, nothing else."""
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGB", (24, 16), (10, 10, 200)).save(tmp_path / "b.png")
    records = [
        {
            "images": ["a.png", "b.png"],
            "conversations": [
                {"from": "system", "value": "the box"},
                {"from": "human", "value": "<image> what colour is the circle"},
                {"from": "gpt", "value": "red"},
                {"from": "human", "value": "and <image> which shape"},
                {"from": "gpt", "value": "the star"},
            ],
        },
        {
            "image": "b.png",
            "conversations": [{"from": "human", "value": "<image> how many"}, {"from": "gpt", "value": "two"}],
        },
    ]
    processor = tiny_processor(arch)
    collator = TokenPruneDataCollator(processor, image_folder=tmp_path)
    batch = collator(list(load_conversation_records(records, tmp_path)))
    tokenizer = processor.tokenizer
    expected = [["red <|im_end|>", "the star <|im_end|>"], ["two <|im_end|>"]]
    for row, answers in enumerate(expected):
        labels = batch["labels"][row]
        supervised = labels != -100
        assert torch.equal(labels[supervised], batch["input_ids"][row][supervised])
        # Contiguous runs of supervised positions, decoded.
        runs, current = [], []
        for position, flag in enumerate(supervised.tolist()):
            if flag:
                current.append(int(labels[position]))
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        assert [tokenizer.decode(run) for run in runs] == answers
    # The batch is what the model takes: it runs and gives the stock loss.
    model = BUILDERS[arch]()
    assert torch.isfinite(model(**batch).loss)


def test_collator_needs_a_chat_template():
    processor = tiny_processor("llava")
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        TokenPruneDataCollator(processor)
