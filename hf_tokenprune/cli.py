"""`hf-tokenprune` console entry point. Sub-commands parse dataclasses with `HfArgumentParser`."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml
from transformers import HfArgumentParser

from .bench import BenchArguments, run_bench
from .evaluate import EvalArguments, run_eval
from .testbed.demo import DemoArguments, run_demo
from .testbed.pipeline import ReproduceArguments, run_reproduce
from .training.entry import TRAIN_ARGUMENTS


def run_train(*arguments):
    from .training.entry import run_train as train

    train(*arguments)


@dataclass
class PushArguments:
    """Upload a saved pruned folder to the Hub in one commit, with a model card rendered for the repo id.

    `hf-tokenprune push DIR --repo-id user/name`: the folder may come first without its flag.
    """

    positional: ClassVar[tuple[str, ...]] = ("folder",)

    folder: str = field(metadata={"help": "Folder written by save_pretrained (adapter or merged form)."})
    repo_id: str = field(metadata={"help": "Hub repo id, 'namespace/name'; created when missing."})
    eval_results: str | None = field(
        default=None, metadata={"help": "JSON file of evaluation results, uploaded as eval_results.json."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo private (an existing repo is unchanged)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created when missing)."})
    token: str | None = field(default=None, metadata={"help": "Hub token; default: the logged-in one."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing directly."})


def run_push(args: PushArguments):
    from .hub import push_folder

    commit = push_folder(
        args.folder,
        args.repo_id,
        token=args.token,
        private=True if args.private else None,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        eval_results=args.eval_results,
    )
    print(commit.commit_url)
    if commit.pr_url:
        print(commit.pr_url)
    return commit


COMMANDS = {
    "demo": (DemoArguments, run_demo),
    "bench": (BenchArguments, run_bench),
    "train": (TRAIN_ARGUMENTS, run_train),
    "push": (PushArguments, run_push),
    "reproduce": (ReproduceArguments, run_reproduce),
    "eval": (EvalArguments, run_eval),
}


def parse_arguments(arguments_classes, argv: list[str], prog: str) -> tuple:
    """Dataclasses from `argv`; `--config file.yaml` supplies defaults (a flat mapping) that flags override.

    Fields a class lists in its `positional` class attribute may be given first, in that order, without their flag.
    """
    classes = arguments_classes if isinstance(arguments_classes, tuple) else (arguments_classes,)
    parser = HfArgumentParser(classes, prog=prog)
    leading = []
    for name in (name for cls in classes for name in getattr(cls, "positional", ())):
        if not argv or argv[0].startswith("-"):
            break
        leading += [f"--{name}", argv[0]]
        argv = argv[1:]
    argv = leading + argv
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
