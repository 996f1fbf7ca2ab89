"""visionselector trained again on a finished run's VLM with one recipe setting changed (issue 16).

    python benchmarks/selector_variants.py [--run runs/testbed-v6] --variant init0.02|lambda0.5|budget0.2|mix0.1-0.5 [...]
        [--output /tmp/selector_variants]

Each variant trains through the recipe's own `pipeline.train_selector` (the run's base and selector records, seed 0,
the recipe's steps and learning rate) with one change, then evaluates it with `evaluate.run_eval` on 500 v2 test
examples at budget 0.1:

- `initX`: the scorer's weights start at N(0, X) instead of `scorer_init_std` (0.001);
- `lambdaX`: the BCE constraint ramps from 0.1 to X instead of the recipe's `--visionselector_lambda_end` (2.0);
- `budgetX`: trained at budget X instead of `--visionselector_train_budget` (0.05; before 2026-11-27 the recipe
  trained it at 0.1; paper 000 recommends 0.2);
- `stepsN`: N optimiser steps instead of the recipe's 1,500;
- `seedN`: the recipe's `--seed` N instead of 0 (the scorer's start and the data order);
- `mixX-Y`: each image's training budget drawn uniformly from [X, Y] (torch's generator, which the Trainer seeds), so
  the soft mask's threshold also passes through the middle of the ranking, where a shape the scorer has not learned
  sits with the background.

The run's selector records must exist (`selector_data/`, not committed: a `reproduce` resume of the run writes them
again in seconds). Changes join with `+` (`lambda0.5+steps3000`). 2 threads; run nothing beside it. `benchmarks/score_rank_by_kind.py --adapter OUTPUT/<run>-<variant>` then shows
which shapes it ranks with the background. Results: docs/testbed.md ("The recipe's time").
"""

import argparse
import json
from pathlib import Path


def apply_change(change: str, fields: dict, parser) -> None:
    """Apply one `--variant` change (`+` joins several) to the recipe fields or patched code."""
    import torch

    from hf_tokenprune.modeling import selector_visionselector
    from hf_tokenprune.modeling.selection_ops import tokens_to_keep
    from hf_tokenprune.training import recipe as training_recipe

    if change.startswith("init"):
        std = float(change.removeprefix("init"))

        def reset(scorer, std=std):  # the config field is saved with the adapter; only the start changes
            torch.nn.init.normal_(scorer.query_proj.weight, std=std)
            torch.nn.init.normal_(scorer.key_proj.weight, std=std)

        selector_visionselector.VisionSelectorScorer.reset_parameters = reset
    elif change.startswith("lambda"):
        fields["visionselector_lambda_end"] = float(change.removeprefix("lambda"))
    elif change.startswith("budget"):
        fields["visionselector_train_budget"] = float(change.removeprefix("budget"))
    elif change.startswith("steps"):
        fields["selector_method_steps"] = f"visionselector={int(change.removeprefix('steps'))}"
    elif change.startswith("seed"):
        fields["seed"] = int(change.removeprefix("seed"))
    elif change.startswith("mix"):
        low, high = map(float, change.removeprefix("mix").split("-"))

        def drawn(budget, num_tokens, low=low, high=high):  # the recipe's `train_budget` is replaced per image
            return tokens_to_keep(low + (high - low) * torch.rand(()).item(), num_tokens)

        training_recipe.tokens_to_keep = drawn
    else:
        parser.error(f"--variant change {change!r}: expected initX, lambdaX, budgetX, stepsN, seedN or mixX-Y")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/testbed-v6")
    parser.add_argument("--variant", action="append", required=True)
    parser.add_argument("--output", default="/tmp/selector_variants")
    args = parser.parse_args()

    import torch

    from hf_tokenprune.modeling import selector_visionselector
    from hf_tokenprune.training import recipe as training_recipe
    from hf_tokenprune_testbed import evaluate
    from hf_tokenprune_testbed.pipeline import ReproduceArguments, train_selector

    torch.set_num_threads(2)
    run, output = Path(args.run), Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    reset_parameters = selector_visionselector.VisionSelectorScorer.reset_parameters
    tokens_to_keep = training_recipe.tokens_to_keep
    for variant in args.variant:
        fields = {}
        selector_visionselector.VisionSelectorScorer.reset_parameters = reset_parameters
        training_recipe.tokens_to_keep = tokens_to_keep
        for change in variant.split("+"):
            apply_change(change, fields, parser)
        adapter = output / f"{run.name}-{variant}"
        recipe = ReproduceArguments(output=str(output), **{"seed": 0, **fields})
        train_selector("visionselector", run / "base", run / "selector_data" / "train.json", adapter, recipe)
        result = evaluate.run_eval(
            evaluate.EvalArguments(
                model=str(run / "base"),
                adapters=f"visionselector={adapter}",
                methods="visionselector",
                budgets="0.1",
                limit=500,
                task="v2",
                output=str(output / f"{run.name}-{variant}.json"),
            )
        )
        print(variant, json.dumps(result["results"]), "evidence recall", result["evidence_recall"])
    selector_visionselector.VisionSelectorScorer.reset_parameters = reset_parameters
    training_recipe.tokens_to_keep = tokens_to_keep


if __name__ == "__main__":
    main()
