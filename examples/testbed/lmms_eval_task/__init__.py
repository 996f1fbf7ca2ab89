"""The testbed task for lmms-eval: `hf-tokenprune lmms-task` writes a task folder that `lmms-eval --include_path` reads.

The folder holds the split as a `datasets` dataset on disk (`data/`, no Hub access) and `testbed_vqa.yaml`, which
includes the shipped `_default_template_yaml` (prompt, decoding and metric of `hf-tokenprune eval`) and names the
dataset, so lmms-eval's accuracy equals `hf-tokenprune eval`'s on the same examples and budget:

    hf-tokenprune lmms-task --output runs/lmms_task --split test --limit 500
    lmms-eval --model hf_tokenprune --tasks testbed_vqa --include_path runs/lmms_task \
        --model_args pretrained=<pruned repo>,prune_budget=0.2,batch_size=8
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import tasks
from ..model import BUNDLED_TASK
from ..scenes import task_split

TASK_NAME = "testbed_vqa"
TEMPLATE = Path(__file__).resolve().parent / "_default_template_yaml"


@dataclass
class LmmsTaskArguments:
    """Arguments of `hf-tokenprune lmms-task`.

    Fields: output, split, limit.
    """

    output: str = field(default="lmms_task", metadata={"help": "Task folder to write (pass it to --include_path)."})
    split: str = field(default="test", metadata={"help": "Task split: train, validation or test."})
    limit: int = field(default=500, metadata={"help": "Examples: the first N of the split (>= 1)."})


def export_task(output: str | os.PathLike, split: str = "test", limit: int = 500) -> Path:
    """Write the task folder `output`: `data/` (a `DatasetDict` with one split, `split`, of the first `limit` examples:
    image, question, answer, kind, seed) and `testbed_vqa.yaml`. Returns the YAML's path."""
    import datasets

    if split not in tasks.SPLIT_SEED_OFFSETS:
        raise ValueError(f"`split` must be one of {tuple(tasks.SPLIT_SEED_OFFSETS)}, got {split!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= tasks.SPLIT_SIZE:
        raise ValueError(f"`limit` must be an integer in [1, {tasks.SPLIT_SIZE}], got {limit!r}")
    output = Path(output).resolve()
    examples = task_split(split, limit, BUNDLED_TASK)  # the bundled VLM's task
    features = datasets.Features(
        image=datasets.Image(),
        question=datasets.Value("string"),
        answer=datasets.Value("string"),
        kind=datasets.Value("string"),
        seed=datasets.Value("int64"),
    )
    rows = {
        "image": [example.image for example in examples],
        "question": [example.question for example in examples],
        "answer": [example.answer for example in examples],
        "kind": [example.kind for example in examples],
        "seed": [example.seed for example in examples],
    }
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=features)})
    data.save_to_disk(str(output / "data"))
    task_yaml = output / f"{TASK_NAME}.yaml"
    # A JSON string is a valid YAML scalar, so any path is quoted right.
    task_yaml.write_text(
        f"include: {json.dumps(str(TEMPLATE))}\ntask: {TASK_NAME}\n"
        f"dataset_path: {json.dumps(str(output / 'data'))}\ntest_split: {split}\n",
        encoding="utf-8",
    )
    return task_yaml


def run_export(args: LmmsTaskArguments) -> Path:
    """`hf-tokenprune lmms-task`: export the split and print the lmms-eval command that runs it."""
    task_yaml = export_task(args.output, args.split, args.limit)
    print(f"wrote {task_yaml.parent} ({args.limit} {args.split} examples); run it with:")
    print(
        f"lmms-eval --model hf_tokenprune --tasks {TASK_NAME} --include_path {task_yaml.parent} "
        "--model_args pretrained=<pruned repo>,prune_budget=0.2,batch_size=8 --output_path lmms_results"
    )
    return task_yaml


__all__ = ["TASK_NAME", "LmmsTaskArguments", "export_task", "run_export"]
