"""`hf-tokenprune train`: load a VLM and its processor, attach a learned selector, train it on conversation records.

    hf-tokenprune train --config recipe.yaml [--any_field value ...]
    accelerate launch --num_processes 2 -m hf_tokenprune.cli train --config recipe.yaml

The YAML holds the fields of `TrainModelArguments`, `TrainDataArguments` and the training arguments
(`training_arguments_class()`: `TokenPruneTrainingArguments` plus the arguments of recipes registered since) in one
flat mapping; command-line flags override it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..modeling.configuration_token_prune import TokenPruneConfig
from .arguments import TokenPruneTrainingArguments, training_arguments_class
from .recipe import get_recipe

TINY_PREFIX = "tiny:"


@dataclass
class TrainModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Base VLM: a Hub id or a local directory (loaded with AutoModelForImageTextToText), or "
            "'tiny:<arch>' (arch: a key of hf_tokenprune.testing.TINY_ARCHITECTURES) for a tiny random model and "
            "processor built from configs, for smoke tests."
        },
    )
    processor_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor to use (default: the model's)."}
    )
    revision: str | None = field(default=None, metadata={"help": "Revision of the base model on the Hub."})
    method: str = field(
        default="visionselector", metadata={"help": "Learned selector to train (one with a registered recipe)."}
    )
    budget: float | None = field(
        default=None, metadata={"help": "Default inference budget written to the selector config (None: unset)."}
    )
    scorer_hidden_size: int | None = field(default=None, metadata={"help": "Selector width (default: the method's)."})
    scorer_num_layers: int | None = field(default=None, metadata={"help": "Selector depth (default: the method's)."})
    scorer_num_heads: int | None = field(
        default=None, metadata={"help": "Attention heads of Transformer selectors (default: width // 128)."}
    )
    dtype: str = field(default="auto", metadata={"help": "Dtype of the frozen VLM: auto, float32, bfloat16, float16."})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa or flash_attention_2."})


@dataclass
class TrainDataArguments:
    train_file: str | None = field(default=None, metadata={"help": "Conversation records, .json (list) or .jsonl."})
    image_folder: str | None = field(default=None, metadata={"help": "Folder that relative image paths resolve in."})
    on_bad_image: str = field(
        default="skip", metadata={"help": "Records with a missing or unreadable image: 'skip' (reported) or 'error'."}
    )


def __getattr__(name: str) -> Any:
    # `TRAIN_ARGUMENTS` is built when read, so it holds the arguments of every recipe registered by then.
    if name == "TRAIN_ARGUMENTS":
        return (TrainModelArguments, TrainDataArguments, training_arguments_class())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model_and_processor(args: TrainModelArguments):
    """(base model, processor) for `args.model_name_or_path`."""
    name = args.model_name_or_path
    if name.startswith(TINY_PREFIX):
        from ..testing import BUILDERS, tiny_processor

        arch = name[len(TINY_PREFIX) :]
        if arch not in BUILDERS:
            raise ValueError(f"`model_name_or_path` {name!r}: tiny architectures are {sorted(BUILDERS)}")
        return BUILDERS[arch](args.attn_implementation or "eager"), tiny_processor(arch)
    from transformers import AutoModelForImageTextToText

    from ..processing import load_processor

    kwargs = {"revision": args.revision, "dtype": args.dtype}
    if args.attn_implementation is not None:
        kwargs["attn_implementation"] = args.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
    # AutoProcessor, or the image-only Qwen2.5-VL processor where one was saved (the testbed's, for example).
    processor = load_processor(args.processor_name_or_path or name, revision=args.revision)
    return model, processor


def run_train(
    model_args: TrainModelArguments, data_args: TrainDataArguments, training_args: TokenPruneTrainingArguments
):
    """Train and save the selector to `training_args.output_dir`; returns the trainer."""
    from transformers import set_seed

    from ..model import get_pruned_model
    from .data import load_conversation_records
    from .trainer import TokenPruneTrainer

    # Everything a typo could break is checked before the model is loaded.
    if model_args.model_name_or_path is None:
        raise ValueError("`model_name_or_path` is required")
    if data_args.train_file is None:
        raise ValueError("`train_file` is required")
    get_recipe(model_args.method)
    if training_args.output_dir is None:
        raise ValueError("`output_dir` is required")
    prune_config = TokenPruneConfig(
        method=model_args.method,
        budget=model_args.budget,
        scorer_hidden_size=model_args.scorer_hidden_size,
        scorer_num_layers=model_args.scorer_num_layers,
        scorer_num_heads=model_args.scorer_num_heads,
        base_model_name_or_path=model_args.model_name_or_path,
        base_model_revision=model_args.revision,
    )
    records = load_conversation_records(data_args.train_file, data_args.image_folder, data_args.on_bad_image)
    base, processor = load_model_and_processor(model_args)
    # The scorer's weights are drawn when it is attached, before the Trainer seeds anything: seed first (as the
    # transformers example scripts do before building a model), or its start depends on what the process drew before.
    set_seed(training_args.seed)
    model = get_pruned_model(base, prune_config)
    trainer = TokenPruneTrainer(
        model=model,
        args=training_args,
        train_dataset=records,
        processing_class=processor,
        image_folder=data_args.image_folder,
    )
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("", "false", "none"):
        resume = None
    elif isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the Trainer resumes from the last checkpoint in output_dir
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    if trainer.args.should_save:
        print(f"selector saved to {Path(training_args.output_dir).resolve()}")
    release_process_group(trainer)
    return trainer


def release_process_group(trainer) -> None:
    """Tear down `accelerate launch`'s process group in an order that cannot deadlock; a no-op in one process.

    Works around a torch bug (pytorch/pytorch#56297): freeing the DDP wrapper frees its Reducer, and if that drops
    the last reference to a gloo process group, the group's destructor joins gloo's worker threads while holding the
    GIL; a worker still freeing the last collective's tensors needs the GIL, so the rank hangs (or, at interpreter
    exit, aborts with "terminate called without an active exception") after a complete save. Here the DDP wrapper
    is freed while this function still holds the group, and the group's last reference is then dropped through its
    Python binding, whose destructor releases the GIL.
    """
    import gc

    import torch.distributed as dist

    if not dist.is_initialized():
        return
    trainer.accelerator.wait_for_everyone()
    group = dist.group.WORLD
    trainer.accelerator.free_memory()
    trainer.model_wrapped = trainer.model
    gc.collect()  # DDP's hooks form reference cycles
    trainer.accelerator.end_training()  # destroy_process_group: `group` is now the last reference
    del group
