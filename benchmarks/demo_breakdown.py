"""Where the demo's time to first token goes, unpruned and pruned, on the bundled testbed VLM (issue 16).

    python benchmarks/demo_breakdown.py [--seed 5] [--method visionselector] [--budget 0.2] [--repeats 40]

It runs `generate(max_new_tokens=1)` as `hf-tokenprune demo` times it, with `time.perf_counter` wrappers around the
parts (the vision tower and its submodules, the pruned model's selection steps, the language model), and prints the
median of each part over `--repeats` calls; "the rest of generate" is the whole minus the parts. Wrapping adds a few
microseconds per part. torch's profiler would split by op, not by these parts. Results: docs/testbed.md ("The demo on
the bundle").
"""

import argparse
import statistics
import time
from collections import defaultdict


class PartTimer:
    """Wraps callables in place and collects their wall time per call, by name."""

    def __init__(self) -> None:
        self.times = defaultdict(list)
        self.parts_of = defaultdict(list)  # section -> the names wrapped as its parts, in order

    def wrap(self, owner, attribute: str, name: str, part_of: str | None = None) -> None:
        function = getattr(owner, attribute)
        if part_of is not None:
            self.parts_of[part_of].append(name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self.times[name].append(time.perf_counter() - start)
            return result

        setattr(owner, attribute, timed)

    def medians(self) -> dict[str, float]:
        return {name: statistics.median(values) * 1e3 for name, values in self.times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--method", default="visionselector")
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import hf_tokenprune.modeling.pruning as pruning
    from hf_tokenprune import get_pruned_model
    from hf_tokenprune_testbed import scenes, tasks
    from hf_tokenprune_testbed.model import DEFAULT_ADAPTERS, build_batch, load_testbed

    torch.set_num_threads(args.threads)
    example = scenes.task_example(tasks.SPLIT_SEED_OFFSETS["test"] + args.seed, "v2")
    base, processor = load_testbed()
    pruned = get_pruned_model(base, str(DEFAULT_ADAPTERS[args.method]))
    batch = build_batch(processor, [example.image], [example.question])
    timer = PartTimer()
    tower = base.model.visual
    timer.wrap(tower, "forward", "vision tower")
    timer.wrap(tower.patch_embed, "forward", "  patch embedding", "vision tower")
    for index, block in enumerate(tower.blocks):
        kind = "full" if index in tower.fullatt_block_indexes else "windowed"
        timer.wrap(block, "forward", f"  block {index} ({kind} attention)", "vision tower")
    timer.wrap(tower.merger, "forward", "  merger", "vision tower")
    timer.wrap(pruned, "plan_pruning", "selection and compaction (with the tower)")
    timer.wrap(pruning, "drop_unselected", "  scorer and top-k", "selection and compaction")
    timer.wrap(pruned.prune_hooks, "position_ids", "  M-RoPE positions", "selection and compaction")
    timer.wrap(pruned, "_compact", "  compaction", "selection and compaction")
    timer.wrap(base.model.language_model, "forward", "language model")

    visual = int((batch["input_ids"] == base.config.image_token_id).sum())
    print(f"test example {args.seed}: {visual} visual tokens, {batch['input_ids'].shape[1]} in the prompt")
    results = {}
    for label, model, kwargs in (
        ("unpruned", base, {}),
        (f"{args.method} at {args.budget}", pruned, {"prune_budget": args.budget}),
    ):
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=1, **kwargs)  # warm-up
            timer.times.clear()
            whole = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                model.generate(**batch, max_new_tokens=1, **kwargs)
                whole.append(time.perf_counter() - start)
        parts = timer.medians()
        parts["time to first token"] = statistics.median(whole) * 1e3
        top = ("vision tower", "language model")
        if "selection and compaction (with the tower)" in parts:
            parts["selection and compaction"] = parts.pop("selection and compaction (with the tower)") - parts[top[0]]
            top += ("selection and compaction",)
        parts["the rest of generate"] = parts["time to first token"] - sum(parts[name] for name in top)
        results[label] = parts
    sections = ["vision tower", "selection and compaction", "language model", "the rest of generate"]
    names = [row for section in sections for row in (section, *timer.parts_of[section])] + ["time to first token"]
    print("| part | " + " | ".join(f"{label} ms" for label in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in names:
        cells = " | ".join(f"{parts[name]:.2f}" if name in parts else "-" for parts in results.values())
        print(f"| {name} | {cells} |")
    unpruned, pruned_ms = (parts["time to first token"] for parts in results.values())
    print(f"speed-up: {unpruned / pruned_ms:.2f}x")


if __name__ == "__main__":
    main()
