"""Training forward vs hard-pruned forward on the testbed VLM, and evidence recall, at one budget (issue 15).

    python benchmarks/training_fidelity.py [--limit 208] [--budget 0.1] [--adapters method=dir,...] [--output out.json]

Per learned method: the answer CE of its training forward (soft mask at train_budget, end-of-schedule values)
and of the real hard-pruned forward on the same batches; per method (training-free too): evidence recall, the
share of the evidence tokens (cells that the answer's objects touch) that the hard selection keeps. A recipe's
train-only modules (autoselect's denoiser) load from `<adapter>-run/` when that training run is there; the bundled
adapters have none, so their training forward runs with a fresh (identity) denoiser. Results: docs/testbed.md.
"""

import argparse
import json
import os
import tempfile

import numpy as np
import torch

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.training import TokenPruneDataCollator, TokenPruneTrainingArguments
from hf_tokenprune.training.training_model import TokenPruneTrainingModel
from hf_tokenprune_testbed import tasks
from hf_tokenprune_testbed.model import DEFAULT_ADAPTERS, load_testbed
from hf_tokenprune_testbed.pipeline import example_record


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=208)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--adapters", default="")
    parser.add_argument("--extra_methods", default="divprune,random")
    parser.add_argument("--output", default="fidelity.json")
    parser.add_argument("--variant", default=None, help="visionselector soft-mask variant (new code only)")
    args = parser.parse_args()
    torch.manual_seed(0)
    adapters = dict(DEFAULT_ADAPTERS)
    for item in filter(None, args.adapters.split(",")):
        name, folder = item.split("=")
        adapters[name] = folder
    base, processor = load_testbed()
    collator = TokenPruneDataCollator(processor)
    examples = tasks.make_split("test", args.limit)
    batches = []
    for start in range(0, len(examples), args.batch_size):
        chunk = examples[start : start + args.batch_size]
        batches.append((chunk, collator([example_record(example) for example in chunk])))
    image_id = base.config.image_token_id
    results = {}

    def recall_of(model, method):
        recalls = []
        for chunk, batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                keep = model(**inputs, prune_budget=args.budget, prune_method=method).keep_mask
            for row, example in enumerate(chunk):
                kept = keep[row][batch["input_ids"][row] == image_id].numpy()
                evidence = tasks.evidence_token_mask(example)
                assert evidence.shape == kept.shape, (evidence.shape, kept.shape)
                recalls.append(kept[evidence].mean())
        return float(np.mean(recalls))

    for method in ("visionselector", "autoselect", "reconstruction"):
        if not adapters.get(method):
            continue
        model = get_pruned_model(base, adapters[method])
        extra = {"soft_mask_mode": args.variant} if args.variant and method == "visionselector" else {}
        training_args = TokenPruneTrainingArguments(
            output_dir=tempfile.mkdtemp(), train_budget=args.budget, use_cpu=True, report_to=[], **extra
        )
        training_model = TokenPruneTrainingModel(model, training_args).eval()
        run_dir = f"{adapters[method]}-run"
        if os.path.isfile(f"{run_dir}/training_modules.safetensors"):  # the trained denoiser, for the training forward
            from hf_tokenprune.training.trainer import load_trainable_tensors

            load_trainable_tensors(training_model, run_dir)
        recipe = training_model.recipe
        if hasattr(recipe, "temperature"):
            recipe.temperature = training_args.tau_end  # the end of the annealing, where training stops
        train_ce, hard_ce = [], []
        for _, batch in batches:
            with torch.no_grad():
                if recipe.uses_language_model:
                    train_ce.append(training_model(**batch)["metrics"]["task_loss"])
                hard_ce.append(float(model(**batch, prune_budget=args.budget).loss))
        unpruned = [float(base(**batch).loss) for _, batch in batches] if "unpruned" not in results else None
        if unpruned is not None:
            results["unpruned"] = {"ce": float(np.mean(unpruned))}
        results[method] = {
            "train_forward_ce": float(np.mean(train_ce)) if train_ce else None,
            "hard_ce": float(np.mean(hard_ce)),
            "evidence_recall": recall_of(model, None),
        }
        print(method, results[method], flush=True)
    for method in filter(None, args.extra_methods.split(",")):
        model = get_pruned_model(base, TokenPruneConfig(method=method))
        results[method] = {"evidence_recall": recall_of(model, None)}
        print(method, results[method], flush=True)
    results["examples"] = len(examples)
    results["budget"] = args.budget
    with open(args.output, "w") as handle:
        json.dump(results, handle, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
