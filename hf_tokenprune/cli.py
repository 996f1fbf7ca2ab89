"""`hf-tokenprune` console entry point. Sub-commands parse dataclasses with `HfArgumentParser`."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

#: command -> (module, its arguments dataclass (or tuple of them), its run function). Imported only when the
#: command runs, so `hf-tokenprune push` never loads the Trainer and no command imports another's code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("hf_tokenprune_testbed.demo", "DemoArguments", "run_demo"),
    "eval": ("hf_tokenprune_testbed.evaluate", "EvalArguments", "run_eval"),
    "reproduce": ("hf_tokenprune_testbed.pipeline", "ReproduceArguments", "run_reproduce"),
    "bench": ("hf_tokenprune.bench", "BenchArguments", "run_bench"),
    "train": ("hf_tokenprune.training.entry", "TRAIN_ARGUMENTS", "run_train"),
    "push": ("hf_tokenprune.commands.push", "PushArguments", "run_push"),
    "space": ("hf_tokenprune.space", "SpaceArguments", "run_space"),
    "push-space": ("hf_tokenprune.commands.push_space", "PushSpaceArguments", "run_push_space"),
    "lmms-task": ("hf_tokenprune_testbed.lmms_eval_task", "LmmsTaskArguments", "run_export"),
}


def load_command(name: str) -> tuple[type | tuple[type, ...], object]:
    """(arguments dataclass or tuple of them, run function) of command `name`, importing its module now."""
    module_name, arguments_name, run_name = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, arguments_name), getattr(module, run_name)


def parse_arguments(arguments_classes, argv: list[str], prog: str) -> tuple:
    """Dataclasses from `argv`; `--config file.yaml` supplies defaults (a flat mapping) that flags override.

    Fields a class lists in its `positional` class attribute may be given first, in that order, without their flag.
    """
    classes = arguments_classes if isinstance(arguments_classes, tuple) else (arguments_classes,)
    import yaml
    from transformers import HfArgumentParser

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
    arguments_classes, command = load_command(argv[0])
    command(*parse_arguments(arguments_classes, argv[1:], prog=f"hf-tokenprune {argv[0]}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
