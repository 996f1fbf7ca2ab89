"""Which objects a learned selector fails to keep on task v2, by the shape the question names (issue 16).

    python benchmarks/evidence_by_shape.py [--run runs/testbed-v6] [--method visionselector] [--budget 0.5]
        [--limit 200] [--adapter PATH]

For the first `--limit` test examples with evidence, it prunes the prompt at `--budget` with the run's adapter (or
`--adapter`) and counts, per shape named in the question, the examples whose evidence tokens were not all kept. At a
budget well above the evidence's share of the tokens (under 3%), a selector that ranks every object above the clutter
keeps all of it; misses concentrated on one shape mean the scorer ranks that shape with the clutter. 2 threads.
Results: docs/testbed.md ("The recipe's time").
"""

import argparse
import collections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/testbed-v6")
    parser.add_argument("--method", default="visionselector")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()

    import torch

    from hf_tokenprune import get_pruned_model
    from hf_tokenprune_testbed import scenes, tasks
    from hf_tokenprune_testbed.model import build_batch, load_testbed

    torch.set_num_threads(2)
    base, processor = load_testbed(f"{args.run}/base")
    pruned = get_pruned_model(base, args.adapter or f"{args.run}/{args.method}")
    asked, missed = collections.Counter(), collections.Counter()
    for index in range(args.limit):
        example = scenes.task_example(tasks.SPLIT_SEED_OFFSETS["test"] + index, "v2")
        evidence = torch.from_numpy(tasks.evidence_token_mask(example))
        if not evidence.any():  # a "no" to an existence question: nothing to keep
            continue
        batch = build_batch(processor, [example.image], [example.question])
        with torch.no_grad():
            output = pruned.generate(**batch, max_new_tokens=1, prune_budget=args.budget, return_dict_in_generate=True)
        keep = output.keep_mask[0][batch["input_ids"][0] == base.config.image_token_id]
        shapes = tasks.shapes_named(example.question) or ("(none named)",)
        for shape in shapes:
            asked[shape] += 1
            missed[shape] += bool((evidence & ~keep).any())
    print(f"{args.method} at {args.budget}, {args.run}: examples that lose evidence, by the shape the question names")
    print("| shape | lose evidence | examples |")
    print("|---|---|---|")
    for shape in sorted(asked, key=lambda shape: -missed[shape] / asked[shape]):
        print(f"| {shape} | {missed[shape]} | {asked[shape]} |")


if __name__ == "__main__":
    main()
