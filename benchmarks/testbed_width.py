"""The testbed VLM's width: what a wider language model buys the demo and costs the recipe (issue 16).

    python benchmarks/testbed_width.py [--widths 128,256] [--seeds 0,5,7] [--repeats 15] [--round_steps 20]

For each width it builds a freshly initialised testbed VLM (`new_testbed_model`: the recipe's tower, 5 decoder
layers) and the visionselector at its initialisation. Timing does not depend on the weights: the budget fixes how many
tokens are kept. On test images of task v2 it times, side by side in one run, as the demo does (2 threads):

- `tower`: the vision tower alone;
- `unpruned`: `generate(max_new_tokens=1)` of the stock model (tower included);
- `pruned`: the same through `get_pruned_model` at budget 0.2 (tower and selection included).

Then it trains `--round_steps` steps of the default schedule's last round at that width (`pipeline.train_vlm` with
`vlm_round_arguments`: batch 16, gather and count terms, token dropout, on 16 x steps records) and prints the
Trainer's seconds per step, which is what the recipe's VLM rounds cost. Results: docs/testbed.md ("The width").
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def median_ms(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="128,256")
    parser.add_argument("--seeds", default="0,5,7")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--round_steps", type=int, default=20)
    args = parser.parse_args()

    import torch

    from hf_tokenprune import TokenPruneConfig, get_pruned_model
    from hf_tokenprune_testbed import scenes, tasks
    from hf_tokenprune_testbed.model import new_testbed_model
    from hf_tokenprune_testbed.pipeline import ReproduceArguments, parse_schedule, train_vlm, vlm_round_arguments

    defaults = ReproduceArguments()
    last_round = parse_schedule(defaults.vlm_schedule, defaults.vlm_cached_records)[-1]

    torch.set_num_threads(args.threads)
    examples = [
        (seed, scenes.task_example(tasks.SPLIT_SEED_OFFSETS["test"] + int(seed), "v2"))
        for seed in args.seeds.split(",")
    ]
    print("width  seed  tokens  tower ms  unpruned ms  pruned ms  speed-up")
    first_step = None
    for width in (int(w) for w in args.widths.split(",")):
        base, processor = new_testbed_model(seed=0, text_width=width)
        base.eval()
        pruned = get_pruned_model(base, TokenPruneConfig(method="visionselector"))
        speedups = [
            time_to_first_token(base, pruned, processor, seed, example, args.repeats) for seed, example in examples
        ]
        arguments = vlm_round_arguments(ReproduceArguments(vlm_width=width), last_round)
        arguments |= dict(steps=args.round_steps, cached_records=args.round_steps * defaults.vlm_batch_size)
        with tempfile.TemporaryDirectory() as folder:
            train_vlm(Path(folder) / "round", **arguments)
            log = json.loads((Path(folder) / "round" / "training_log.json").read_text())
        step = log[-1]["train_runtime"] / args.round_steps
        first_step = first_step or step
        print(
            f"width {width}: speed-up at 0.2 median {statistics.median(speedups):.2f}x; recipe round "
            f"{step:.2f} s per step ({step / first_step:.2f}x width {args.widths.split(',')[0]}'s)"
        )


def time_to_first_token(base, pruned, processor, seed: str, example, repeats: int) -> float:
    """Print the tower's, the unpruned and the pruned (budget 0.2) time of `base` on `example`; the speed-up."""
    import torch

    from hf_tokenprune_testbed.model import build_batch

    batch = build_batch(processor, [example.image], [example.question])
    with torch.no_grad():
        tower = median_ms(lambda: base.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]), repeats)
        unpruned = median_ms(lambda: base.generate(**batch, max_new_tokens=1), repeats)
        pruned_ms = median_ms(lambda: pruned.generate(**batch, max_new_tokens=1, prune_budget=0.2), repeats)
    tokens = int((batch["input_ids"] == base.config.image_token_id).sum())
    width = base.config.text_config.hidden_size
    print(
        f"{width:5d}  {seed:>4}  {tokens:6d}  {tower:8.2f}  {unpruned:11.2f}  {pruned_ms:9.2f}  "
        f"{unpruned / pruned_ms:7.2f}x"
    )
    return unpruned / pruned_ms


if __name__ == "__main__":
    main()
