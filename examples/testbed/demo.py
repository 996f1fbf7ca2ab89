"""`hf-tokenprune demo`: the bundled testbed VLM answers a task question with and without pruning.

It draws a test-split image of task v2 (or v1), asks its question, answers with the unpruned model and with the
selector at the budget, writes a PNG with the kept visual tokens outlined over the image, and prints the time to first
token of both, measured side by side (vision encoding included), and the KV-cache bytes each prefill left.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from hf_tokenprune import TokenPruneConfig, get_pruned_model, get_selector_class
from hf_tokenprune.cost import cache_bytes
from hf_tokenprune.evaluate import first_word, parse_budgets
from hf_tokenprune.space import kept_token_overlay  # the Space's overlay (gradio is imported only by its app)

from .model import (
    BUNDLED_TASK,
    DEFAULT_ADAPTERS,
    DEFAULT_MODEL_DIR,
    MERGE_SIZE,
    build_batch,
    load_testbed,
)


@dataclass
class DemoArguments:
    """Pruned vs unpruned answers of the bundled testbed VLM on a generated task image (no download)."""

    method: str = field(default="visionselector", metadata={"help": "Selector: a learned one (bundled) or any other."})
    budget: float = field(default=0.2, metadata={"help": "Fraction of the image's visual tokens to keep, in (0, 1]."})
    seed: int = field(default=0, metadata={"help": "Which test-split task image to use (0, 1, 2, ...)."})
    kind: str | None = field(
        default=None, metadata={"help": "Question kind (v2: attribute, identity, count, existence; v1 adds reading)."}
    )
    task: str = field(
        default=BUNDLED_TASK, metadata={"help": f"Task: v1 or v2 (default: the bundled VLM's, {BUNDLED_TASK})."}
    )
    output: str = field(default="demo.png", metadata={"help": "PNG with the kept tokens drawn over the image."})
    model: str = field(default=str(DEFAULT_MODEL_DIR), metadata={"help": "Testbed base model (folder or Hub id)."})
    adapter: str | None = field(
        default=None, metadata={"help": "Adapter of a learned method (default: the bundled one for --method)."}
    )
    repeats: int = field(default=5, metadata={"help": "Timed runs of each model for the speed-up (median)."})


def _time_to_first_token(model, batch, repeats: int, **kwargs) -> float:
    model.generate(**batch, max_new_tokens=1, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(**batch, max_new_tokens=1, **kwargs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_demo(args: DemoArguments) -> dict:
    from . import scenes, tasks

    parse_budgets([args.budget], "budget")
    selector_cls = get_selector_class(args.method, argument="method")
    kinds = scenes.KINDS if scenes.check_task(args.task) == "v2" else tasks.KINDS
    if args.kind is not None and args.kind not in kinds:
        raise ValueError(f"`kind` must be one of {kinds} for task {args.task}, got {args.kind!r}")
    if args.seed < 0 or args.repeats < 1:
        raise ValueError("`seed` must be >= 0 and `repeats` >= 1")
    adapter = args.adapter
    if selector_cls.trainable and adapter is None:
        if args.model != str(DEFAULT_MODEL_DIR) or args.method not in DEFAULT_ADAPTERS:
            raise ValueError(f"`adapter` is needed for the learned method {args.method!r} with this --model")
        adapter = str(DEFAULT_ADAPTERS[args.method])

    example = scenes.task_example(tasks.SPLIT_SEED_OFFSETS["test"] + args.seed, args.task, kind=args.kind)
    base, processor = load_testbed(args.model)
    pruned = get_pruned_model(base, adapter if selector_cls.trainable else TokenPruneConfig(method=args.method))
    batch = build_batch(processor, [example.image], [example.question])

    def answer(model, **kwargs):
        output = model.generate(**batch, max_new_tokens=2, return_dict_in_generate=True, **kwargs)
        text = processor.batch_decode(output.sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return first_word(text[0]), output

    unpruned_answer, unpruned_output = answer(base)
    pruned_answer, output = answer(pruned, prune_budget=args.budget)
    unpruned_kv, unpruned_length = cache_bytes(unpruned_output.past_key_values)
    pruned_kv, pruned_length = cache_bytes(output.past_key_values)
    visual = batch["input_ids"][0] == base.config.image_token_id
    keep = output.keep_mask[0][visual]
    grid_t, grid_h, grid_w = batch["image_grid_thw"][0].tolist()
    grid_hw = (grid_h // MERGE_SIZE, grid_w // MERGE_SIZE)
    kept_token_overlay(example.image, grid_hw, keep).save(args.output)
    unpruned_time = _time_to_first_token(base, batch, args.repeats)
    pruned_time = _time_to_first_token(pruned, batch, args.repeats, prune_budget=args.budget)

    print(f"model: testbed Qwen2.5-VL trained from scratch ({sum(p.numel() for p in base.parameters()):,} parameters)")
    print(f"example: task {args.task}, test example {args.seed}")
    print(f"question ({example.kind}): {example.question}")
    print(f"expected answer: {example.answer}")
    print(f"unpruned answer: {unpruned_answer}")
    print(f"{args.method} at budget {args.budget}: {pruned_answer}")
    print(f"visual tokens kept: {int(keep.sum())} of {int(visual.sum())}")
    print(
        f"time to first token: unpruned {unpruned_time * 1e3:.1f} ms, pruned {pruned_time * 1e3:.1f} ms, "
        f"speed-up {unpruned_time / pruned_time:.2f}x (median of {args.repeats}, vision encoder included)"
    )
    print(
        f"KV cache after the answer: unpruned {unpruned_kv:,} bytes ({unpruned_length} positions), pruned "
        f"{pruned_kv:,} bytes ({pruned_length} positions), {unpruned_kv / pruned_kv:.2f}x smaller"
    )
    print(f"kept tokens drawn on the image: {Path(args.output).resolve()}")
    return {
        "question": example.question,
        "answer": example.answer,
        "unpruned_answer": unpruned_answer,
        "pruned_answer": pruned_answer,
        "kept": int(keep.sum()),
        "total": int(visual.sum()),
        "speedup": unpruned_time / pruned_time,
        "unpruned_ttft": unpruned_time,
        "pruned_ttft": pruned_time,
        "unpruned_kv_bytes": unpruned_kv,
        "pruned_kv_bytes": pruned_kv,
    }
