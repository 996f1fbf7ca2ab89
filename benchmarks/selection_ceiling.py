"""How much a selector could gain on task v2: accuracy at one budget when an oracle chooses the kept tokens (issue 16).

    python benchmarks/selection_ceiling.py [--model DIR] [--limit 200] [--budget 0.1] [--clutter 24,64]

Rows: unpruned; "asked objects" (the objects the question is about, `pipeline.token_relevance`, then random tokens up
to the budget); "all objects" (every object that is not clutter, then random: the best a question-blind selector can
do); DivPrune. Validation split of v2, 1 torch thread. Results: docs/testbed.md ("How much a question-blind selector
could gain").

Why an oracle by hand: no library selects from labels the generator knows. It is the `random` baseline with its
per-segment choice replaced (on the class: a parameter-free selector is built per call), so the pruning path (keep at
original positions, KV) is the library's.
"""

import argparse
import collections

import torch

from hf_tokenprune import TokenPruneConfig, get_pruned_model
from hf_tokenprune.modeling.selector_random import RandomSelector
from hf_tokenprune_testbed import scenes
from hf_tokenprune_testbed.model import CAPTION_PROMPT, DEFAULT_MODEL_DIR, load_testbed, predict
from hf_tokenprune_testbed.pipeline import token_relevance


def oracle_model(base, seed: int = 0):
    """A `random`-method pruned model whose selection keeps `model.priority` (a (N,) bool mask) first. Patches
    `RandomSelector` for the rest of the process (this script uses no other `random` model)."""
    model = get_pruned_model(base, TokenPruneConfig(method="random")).eval()

    def select_segments(self, features, num_keep, grid_hw=None, generator=None):
        kept = []
        for segment, keep in zip(features, num_keep, strict=True):
            if model.priority.shape != segment.shape[:1]:
                raise ValueError(f"oracle mask of {model.priority.shape} for {segment.shape[0]} tokens")
            tie_break = torch.rand(segment.shape[0], generator=torch.Generator().manual_seed(seed))
            score = model.priority.float() * 10 + tie_break
            kept.append(torch.sort(torch.topk(score, keep).indices).values.to(segment.device))
        return kept

    RandomSelector.select_segments = select_segments
    return model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--clutter", default="24,64", help="min,max clutter glyphs per image")
    args = parser.parse_args()
    torch.set_num_threads(1)
    low, high = (int(value) for value in args.clutter.split(","))
    examples = scenes.task_split("validation", args.limit, "v2", scenes.SceneSpec(clutter=(low, high)))
    base, processor = load_testbed(args.model)
    hits = collections.defaultdict(lambda: collections.defaultdict(list))

    def record(name, answers):
        for example, answer in zip(examples, answers, strict=True):
            for key in (example.kind, "all"):
                hits[name][key].append(answer == example.answer)

    images, questions = [e.image for e in examples], [e.question for e in examples]
    record("unpruned", predict(base, processor, images, questions)[0])
    oracle = oracle_model(base)
    for name, prompt_of in (("asked objects", lambda e: e.question), ("all objects", lambda e: CAPTION_PROMPT)):
        answers = []
        for example in examples:  # one at a time: the oracle's mask is per image
            oracle.priority = torch.from_numpy(token_relevance(example, prompt_of(example)) > 0.5)
            answers += predict(oracle, processor, [example.image], [example.question], prune_budget=args.budget)[0]
        record(name, answers)
    divprune = get_pruned_model(base, TokenPruneConfig(method="divprune")).eval()
    record("divprune", predict(divprune, processor, images, questions, prune_budget=args.budget)[0])
    print(f"clutter {args.clutter}, budget {args.budget}, {args.limit} validation examples")
    for name, by_kind in hits.items():
        print(f"{name:>14}: " + ", ".join(f"{k} {100 * sum(v) / len(v):.1f}%" for k, v in by_kind.items()))


if __name__ == "__main__":
    main()
