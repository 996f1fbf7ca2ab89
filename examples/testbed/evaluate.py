"""`hf-tokenprune eval`: accuracy of a testbed VLM on a task split, unpruned and pruned by each method at each budget.

The task's split and size, the bundled default model and its adapters, and the prompt layout (question before the
image, `model.messages_for`) are the testbed's; the evaluation, the table, the JSON and the plot are the library's
(`hf_tokenprune.evaluate`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_tokenprune import evaluate as evaluation
from hf_tokenprune.evaluate import DEFAULT_BUDGETS, format_table, write_outputs

from . import tasks
from .model import BUNDLED_TASK, DEFAULT_ADAPTERS, DEFAULT_MODEL_DIR, messages_for
from .scenes import SceneSpec, check_task, task_split


@dataclass
class EvalArguments:
    """Arguments of `hf-tokenprune eval`.

    Fields: model, adapters, methods, budgets, task, split, limit, seed, batch_size, output, threads, and the v2
    generator's knobs (objects, clutter, clutter_kinds, side, kinds).
    """

    model: str = field(
        default=str(DEFAULT_MODEL_DIR),
        metadata={"help": "Testbed base model: a saved folder or a Hub repo id (default: the bundled trained model)."},
    )
    adapters: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated method=folder_or_repo_id of trained selectors (adapter repos); default: the "
            "bundled ones when --model is the bundled model, else none. An empty string means none."
        },
    )
    methods: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated selector names; default: every learned method with an adapter plus every "
            "training-free registered method."
        },
    )
    budgets: str = field(
        default=DEFAULT_BUDGETS,
        metadata={
            "help": "Comma-separated budgets: a float in (0, 1] keeps that fraction of each image's tokens, "
            "an integer >= 1 that many tokens, 'auto[:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]]' lets a method that "
            "scores tokens (the learned ones, fastv) choose each image's count (hf_tokenprune.AutoBudget)."
        },
    )
    task: str = field(
        default=BUNDLED_TASK,
        metadata={
            "help": f"Task: v2 (shapes among distinctive clutter) or v1 (default: the bundled VLM's, {BUNDLED_TASK})."
        },
    )
    split: str = field(default="test", metadata={"help": "Task split: train, validation or test."})
    limit: int = field(default=500, metadata={"help": "Examples: the first N of the split (>= 1)."})
    seed: int = field(default=0, metadata={"help": "Seed of the `random` baseline and of torch."})
    batch_size: int = field(default=32, metadata={"help": "Examples per generate call (>= 1)."})
    output: str = field(
        default="eval_results.json", metadata={"help": "JSON results; the retention plot goes beside it (.png)."}
    )
    threads: int | None = field(default=None, metadata={"help": "CPU threads for torch (default: leave as is)."})
    # The v2 generator's knobs (`scenes.SceneSpec`), to measure a model on a shifted distribution; unset: the default.
    objects: str | None = field(default=None, metadata={"help": "v2: `min,max` objects per image (default 3,8)."})
    clutter: str | None = field(default=None, metadata={"help": "v2: `min,max` clutter glyphs per image (24,64)."})
    clutter_kinds: str | None = field(
        default=None, metadata={"help": "v2: comma-separated clutter glyphs (ring,diamond,frame,bar,xmark,dot)."}
    )
    side: str | None = field(default=None, metadata={"help": "v2: `min,max` image side in cells/tokens (12,18)."})
    kinds: str | None = field(
        default=None,
        metadata={"help": "v2: comma-separated question kinds, cycled (attribute,identity,count,existence)."},
    )

    def scene_spec(self) -> SceneSpec:
        """The v2 generator's settings from the knob flags; a knob with --task v1 is refused."""
        knobs = {name: getattr(self, name) for name in SCENE_KNOBS}
        given = [name for name, value in knobs.items() if value is not None]
        if check_task(self.task) == "v1" and given:
            raise ValueError(f"`--{given[0]}` sets the v2 generator; it does not apply to --task v1")
        return SceneSpec.from_flags(**knobs)


SCENE_KNOBS = ("objects", "clutter", "clutter_kinds", "side", "kinds")


def evaluate(
    base, processor, examples: Sequence[Any], methods: Sequence[str], budgets: Sequence[float | int], *args, **kwargs
) -> dict[str, Any]:
    """`hf_tokenprune.evaluate.evaluate` with the testbed's prompt layout; same arguments and results."""
    if all(isinstance(example, tasks.VQAExample) for example in examples):  # the generator knows their evidence

        def evidence_of(example):  # on the token grid of this model's processor
            grid = tasks.token_grid(*example.image.size, image_processor=processor.image_processor)
            return torch.from_numpy(tasks.evidence_token_mask(example, grid))

        kwargs.setdefault("evidence_of", evidence_of)
    return evaluation.evaluate(base, processor, examples, methods, budgets, *args, messages_for=messages_for, **kwargs)


def _is_default_model(model: str) -> bool:
    return Path(model).resolve() == DEFAULT_MODEL_DIR.resolve()


def check_eval_arguments(args: EvalArguments) -> dict[str, Any]:
    """Validate every flag before any model is loaded; returns the parsed values (adapters resolved to folders)."""
    splits = tuple(tasks.SPLIT_SEED_OFFSETS)
    if args.split not in splits:
        raise ValueError(f"`--split` must be one of {splits}, got {args.split!r}")
    if isinstance(args.limit, bool) or not isinstance(args.limit, int) or not 1 <= args.limit <= tasks.SPLIT_SIZE:
        raise ValueError(f"`--limit` must be an integer in [1, {tasks.SPLIT_SIZE}], got {args.limit!r}")
    spec = args.scene_spec()
    defaults: Mapping[str, Path] = DEFAULT_ADAPTERS if _is_default_model(args.model) else {}
    parsed = evaluation.check_eval_options(
        args.model,
        args.adapters,
        args.methods,
        args.budgets,
        args.batch_size,
        args.threads,
        args.output,
        default_adapters=defaults,
    )
    return {**parsed, "scene_spec": spec}


def run_eval(args: EvalArguments) -> dict[str, Any]:
    """`hf-tokenprune eval`: validate every flag, load the model and the split, evaluate, print and write results."""
    from .model import load_testbed

    parsed = check_eval_arguments(args)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        base, processor = load_testbed(args.model)
        examples = task_split(args.split, args.limit, args.task, parsed["scene_spec"])
        results = evaluate(
            base,
            processor,
            examples,
            parsed["methods"],
            parsed["budgets"],
            parsed["adapters"],
            batch_size=args.batch_size,
            seed=args.seed,
        )
    finally:
        torch.set_num_threads(threads)
    print(f"model: {args.model}, task: {args.task}, split: {args.split}, examples: {len(examples)}, seed: {args.seed}")
    if args.task == "v2" and parsed["scene_spec"] != SceneSpec():
        print(f"generator: {parsed['scene_spec']}")
    print(format_table(results))
    output, plot = write_outputs(results, parsed["output"])
    print(f"wrote {output} and {plot}")
    return results


__all__ = ["EvalArguments", "check_eval_arguments", "evaluate", "run_eval"]
