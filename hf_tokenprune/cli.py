"""`hf-tokenprune` console entry point. Sub-commands parse dataclasses with `HfArgumentParser`."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .bench import BenchArguments, run_bench
from .training.entry import TRAIN_ARGUMENTS


@dataclass
class DemoArguments:
    """Pruned generation on a tiny random Qwen2.5-VL built from a config (no download)."""

    method: str = field(default="divprune", metadata={"help": "Selector name (any registered one)."})
    budget: float = field(default=0.2, metadata={"help": "Fraction of each image's visual tokens to keep, in (0, 1]."})
    question: str = field(default="what colour is the circle", metadata={"help": "Question, in the tiny vocabulary."})
    max_new_tokens: int = field(default=8, metadata={"help": "Tokens to generate."})


def run_demo(args: DemoArguments) -> str:
    from . import TokenPruneConfig, get_pruned_model
    from .testing import tiny_qwen2_5_vl, tiny_qwen2_5_vl_inputs, tiny_tokenizer

    base = tiny_qwen2_5_vl()
    tokenizer = tiny_tokenizer()
    inputs = tiny_qwen2_5_vl_inputs(args.question)
    model = get_pruned_model(base, TokenPruneConfig(method=args.method))
    out = model.generate(
        **inputs, prune_budget=args.budget, max_new_tokens=args.max_new_tokens, return_dict_in_generate=True
    )
    visual = inputs["input_ids"] == base.config.image_token_id
    answer = tokenizer.decode(out.sequences[0, inputs["input_ids"].shape[1] :])
    print(f"model: tiny random Qwen2.5-VL ({sum(p.numel() for p in base.parameters())} parameters)")
    print(f"method: {args.method}, budget: {args.budget}")
    print(f"visual tokens kept: {int(out.keep_mask[visual].sum())} of {int(visual.sum())}")
    print(f"answer: {answer}")
    return answer


def run_train(*arguments):
    from .training.entry import run_train as train

    train(*arguments)


COMMANDS = {
    "demo": (DemoArguments, run_demo),
    "bench": (BenchArguments, run_bench),
    "train": (TRAIN_ARGUMENTS, run_train),
}


def parse_arguments(arguments_classes, argv: list[str], prog: str) -> tuple:
    """Dataclasses from `argv`; `--config file.yaml` supplies defaults (a flat mapping) that flags override."""
    classes = arguments_classes if isinstance(arguments_classes, tuple) else (arguments_classes,)
    parser = HfArgumentParser(classes, prog=prog)
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise SystemExit(f"{prog}: --config needs a YAML file")
        path = Path(argv[index + 1])
        argv = argv[:index] + argv[index + 2 :]
        if not path.is_file():
            raise SystemExit(f"{prog}: --config {str(path)!r} does not exist")
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise SystemExit(f"{prog}: --config {str(path)!r} must hold a mapping of field: value")
        known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{prog}: unknown field(s) in --config {str(path)!r}: {unknown}")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(f"usage: hf-tokenprune {{{','.join(COMMANDS)}}} [--help] [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    arguments_classes, command = COMMANDS[argv[0]]
    command(*parse_arguments(arguments_classes, argv[1:], prog=f"hf-tokenprune {argv[0]}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
