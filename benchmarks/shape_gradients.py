"""How hard a VLM's loss pulls on each object shape's tokens at visionselector's first step (issue 16).

    python benchmarks/shape_gradients.py [--run runs/testbed-v6] [--records 200] [--budget 0.1]
        [--soft_mask_mode attention_bias|multiply]

visionselector starts with near-zero weights, so its first scores are all equal and its soft mask keeps every token
at the budget's share. This script builds the recipe's own training step (`TokenPruneTrainer` through the library's
entry point, `pipeline.train_selector`'s settings at `--budget`, the BCE constraint's weight at 0) on the run's first `--records`
selector records one at a time, with the scorer replaced by scores that are all 0, and reads the loss gradient on
each token's score. Minus that gradient is how much raising the token's score would lower the loss at the start:
what first teaches the scorer. It prints, per shape the question names, the mean pull on the evidence tokens (the
cells `tasks.evidence_token_mask` marks), in units of the image's standard deviation of the pull, and its rank
among the image's tokens. 2 threads. Results: docs/testbed.md ("The recipe's time").
"""

import argparse
import collections
import json
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/testbed-v6")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--budget", type=float, default=0.1, help="the training budget of the step (recipe: 0.1)")
    parser.add_argument(
        "--soft_mask_mode", default="attention_bias", help="visionselector's (attention_bias, multiply)"
    )
    args = parser.parse_args()

    import torch

    from hf_tokenprune.model import get_pruned_model
    from hf_tokenprune.modeling.configuration_token_prune import TokenPruneConfig
    from hf_tokenprune.training.arguments import training_arguments_class
    from hf_tokenprune.training.data import load_conversation_records
    from hf_tokenprune.training.trainer import TokenPruneTrainer
    from hf_tokenprune_testbed import scenes, tasks
    from hf_tokenprune_testbed.model import load_testbed

    torch.set_num_threads(2)
    run = Path(args.run)
    folder = run / "selector_data"
    records = json.loads((folder / "train.json").read_text())[: args.records]
    base, processor = load_testbed(run / "base")
    model = get_pruned_model(base, TokenPruneConfig(method="visionselector", budget=0.2))
    with tempfile.TemporaryDirectory() as output:
        training_args = training_arguments_class()(
            output_dir=output,
            train_budget=args.budget,
            soft_mask_mode=args.soft_mask_mode,
            lambda_start=0.0,
            max_steps=1,
            report_to="none",
            save_strategy="no",
        )
        path = Path(output) / "records.json"
        path.write_text(json.dumps(records))
        dataset = load_conversation_records(str(path), str(folder / "images"), "error")
        trainer = TokenPruneTrainer(
            model=model,
            args=training_args,
            train_dataset=dataset,
            processing_class=processor,
            image_folder=str(folder / "images"),
        )
        leaves = []

        def zero_scores(features):  # every score equal, as at the start; a leaf whose gradient we read
            leaves.append(torch.zeros(features.shape[0], requires_grad=True))
            return leaves[-1]

        model.token_selector.score = zero_scores
        pull, rank = collections.defaultdict(list), collections.defaultdict(list)
        for index, record in enumerate(dataset):
            seed = int(Path(records[index]["images"][0]).stem.split("-")[1])
            example = scenes.task_example(tasks.SPLIT_SEED_OFFSETS["train"] + seed, "v2")
            evidence = torch.from_numpy(tasks.evidence_token_mask(example))
            if not evidence.any():
                continue
            batch = trainer.data_collator([record])
            trainer.compute_loss(trainer.model, batch).backward()
            gradient = -leaves[-1].grad
            shapes = tasks.shapes_named(example.question) or ("(none)",)
            percentile = gradient.argsort().argsort().float() / (len(gradient) - 1)
            for shape in shapes:
                pull[shape].append(float(gradient[evidence].mean() / gradient.std()))
                rank[shape].append(float(percentile[evidence].mean()))
    print(
        f"pull on the evidence at visionselector's first step, {args.run}, budget {args.budget}, "
        f"{args.soft_mask_mode}, {args.records} records"
    )
    print("| shape named | examples | mean pull (image std) | mean rank of the evidence |")
    print("|---|---|---|---|")
    for shape in sorted(pull):
        n = len(pull[shape])
        print(f"| {shape} | {n} | {sum(pull[shape]) / n:.2f} | {sum(rank[shape]) / n:.3f} |")


if __name__ == "__main__":
    main()
