"""Where a learned selector ranks each kind of glyph on task v2, and how far apart the tower keeps the look-alikes
(issue 16).

    python benchmarks/score_rank_by_kind.py [--run runs/testbed-v6] [--adapter PATH] [--images 60]

For the first `--images` test images it scores every visual token with the adapter's scorer (default: the run's
visionselector), turns the scores into percentile ranks within the image (0 = lowest, 1 = highest) and prints, per
cell kind (`scenes.grid_token_labels`: background, the five object shapes, the six clutter glyphs), the mean rank and
the share of tokens ranked below 0.9, i.e. outside a 10% budget. It also prints the cosine between the mean
projector features of each object shape and its clutter look-alike (cross / x-mark, square / frame): what the scorer
reads (`feature_source` `projector_output`). 2 threads. Results: docs/testbed.md ("The recipe's time").
"""

import argparse
import collections

LOOK_ALIKES = (("cross", "xmark"), ("square", "frame"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/testbed-v6")
    parser.add_argument("--adapter", default=None, help="adapter repo (default: the run's visionselector)")
    parser.add_argument("--images", type=int, default=60)
    args = parser.parse_args()

    import torch

    from hf_tokenprune import get_pruned_model
    from hf_tokenprune_testbed import scenes, tasks
    from hf_tokenprune_testbed.model import build_batch, load_testbed

    torch.set_num_threads(2)
    base, processor = load_testbed(f"{args.run}/base")
    selector = get_pruned_model(base, args.adapter or f"{args.run}/visionselector").token_selector
    kinds = ("background", *tasks.SHAPES, *scenes.CLUTTER_KINDS)
    ranks, features = collections.defaultdict(list), collections.defaultdict(list)
    for index in range(args.images):
        example = scenes.task_example(tasks.SPLIT_SEED_OFFSETS["test"] + index, "v2")
        batch = build_batch(processor, [example.image], [example.question])
        with torch.no_grad():
            tokens = base.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
            scores = selector.score(tokens.float())
        labels = torch.from_numpy(scenes.grid_token_labels(example))[:, 1]  # 0 background, then `kinds[1:]`
        percentile = scores.argsort().argsort().float() / (len(scores) - 1)
        for number, kind in enumerate(kinds):
            cells = labels == number
            ranks[kind].extend(percentile[cells].tolist())
            features[kind].append(tokens[cells])
    print(f"score ranks by kind, {args.adapter or args.run + '/visionselector'}, {args.images} test images")
    print("| kind | tokens | mean rank | ranked below 0.9 |")
    print("|---|---|---|---|")
    for kind in kinds:
        values = torch.tensor(ranks[kind])
        print(f"| {kind} | {len(values)} | {values.mean():.3f} | {(values < 0.9).float().mean():.0%} |")
    mean = {kind: torch.nn.functional.normalize(torch.cat(features[kind]).mean(0), dim=0) for kind in kinds}
    for shape, clutter in LOOK_ALIKES:
        print(f"cosine of the mean projector features, {shape} / {clutter}: {float(mean[shape] @ mean[clutter]):.3f}")


if __name__ == "__main__":
    main()
