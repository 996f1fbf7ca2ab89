"""Where the learned selectors lose existence questions on task v2 at budget 0.1 (issue 16).

    python benchmarks/existence_misses.py [--run runs/testbed-v2] [--limit 500] [--budget 0.1]

For the existence questions among the first `--limit` test examples: right and wrong answers by true answer (yes /
no), unpruned and for each bundled learned selector, and for every wrong answer whether the question's evidence
tokens (the asked object) were kept. 1 torch thread. Results: docs/testbed.md ("The v2 table").
"""

import argparse
import collections

import torch

from hf_tokenprune import get_pruned_model
from hf_tokenprune.evaluate import build_batch, first_word
from hf_tokenprune_testbed import scenes, tasks
from hf_tokenprune_testbed.model import load_testbed, messages_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/testbed-v2")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--methods", default="visionselector,questionselector")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, processor = load_testbed(f"{args.run}/base")
    models = {"unpruned": base}
    models.update({name: get_pruned_model(base, f"{args.run}/{name}") for name in args.methods.split(",")})
    examples = [example for example in scenes.task_split("test", args.limit) if example.kind == "existence"]
    answers, misses = collections.Counter(), collections.Counter()
    for start in range(0, len(examples), 32):
        chunk = examples[start : start + 32]
        batch = build_batch(processor, [e.image for e in chunk], [e.question for e in chunk], messages_for)
        length = batch["input_ids"].shape[1]
        visual = batch["input_ids"] == base.config.image_token_id
        for name, model in models.items():
            prune = {} if name == "unpruned" else {"prune_budget": args.budget}
            out = model.generate(**batch, max_new_tokens=2, return_dict_in_generate=True, **prune)
            for row, example in enumerate(chunk):
                answer = first_word(processor.tokenizer.decode(out.sequences[row, length:], skip_special_tokens=True))
                right = answer == example.answer
                answers[name, example.answer, right] += 1
                if not right and name != "unpruned":
                    grid = tasks.token_grid(*example.image.size, image_processor=processor.image_processor)
                    evidence = torch.from_numpy(tasks.evidence_token_mask(example, grid)).bool()
                    kept = out.keep_mask[row][visual[row]]
                    misses[name, example.answer, bool((kept | ~evidence).all())] += 1
    print(f"{len(examples)} existence questions, budget {args.budget}")
    for name in models:
        for truth in ("yes", "no"):
            right, wrong = answers[name, truth, True], answers[name, truth, False]
            print(f"{name:>16} true {truth}: {right} right, {wrong} wrong", end="")
            if name != "unpruned" and wrong:
                print(f" (evidence all kept in {misses[name, truth, True]} of the wrong ones)", end="")
            print()


if __name__ == "__main__":
    main()
