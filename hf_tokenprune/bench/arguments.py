"""Arguments of `hf-tokenprune bench` and their validation, which runs before any model is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..modeling.configuration_token_prune import AutoBudget, TokenPruneConfig, check_budget
from ..modeling.token_selectors import (
    available_selectors,
    get_selector_class,
    learned_selectors,
    training_free_selectors,
)
from .presets import PRESETS, Preset

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Row order of the default `--methods`, as the benchmark has always listed them (the order of the design's method
# tables). Which methods run comes from the registry; a selector registered later runs after these, by name.
METHOD_ORDER = (
    "visionselector",
    "autoselect",
    "reconstruction",
    "random",
    "uniform",
    "divprune",
    "dart",
    "fastv",
)


def default_methods() -> list[str]:
    """Every registered selector: the learned ones first, then the training-free ones, each in `METHOD_ORDER`."""

    def rank(name: str) -> tuple[int, str]:
        return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)

    return sorted(learned_selectors(), key=rank) + sorted(training_free_selectors(), key=rank)


@dataclass
class BenchArguments:
    """Arguments of `hf-tokenprune bench`.

    Fields: preset, methods, budgets, layers, vision_layers, repeats, warmup, decode_tokens, text_tokens,
    dtype, device, attn_implementation, threads, output, doc, report, profile, profile_method, profile_budget, seed,
    fit_memory_mib, fit_max_batch, tag.
    """

    preset: str = field(
        default="qwen2.5-vl-7b",
        metadata={
            "help": "Comma-separated presets: qwen2.5-vl-7b, qwen3-vl-8b, llava-1.5-7b, llava-next-7b, internvl3-8b, "
            "smolvlm-instruct, gemma3-12b, llava-onevision-7b (published widths, random weights, one image); videos "
            "qwen2.5-vl-7b-video16, qwen2.5-vl-7b-video64, llava-onevision-7b-video; the 8-image batch "
            "qwen2.5-vl-7b-batch8; or the tiny-* presets of the test models."
        },
    )
    methods: str = field(
        default=",".join(default_methods()),
        metadata={"help": "Comma-separated selector names; default: every learned and training-free method."},
    )
    budgets: str = field(
        default="0.5,0.3,0.2,0.1",
        metadata={
            "help": "Comma-separated fractions of each image's tokens, in (0, 1], or "
            "'auto[:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]]' (each image's count chosen from the method's scores)."
        },
    )
    layers: int = field(
        default=3,
        metadata={
            "help": "Language-model depth to build (0 = the preset's full depth); more is extrapolated. fastv needs "
            "one layer past its K (2)."
        },
    )
    vision_layers: int = field(
        default=2, metadata={"help": "Vision-tower depth to build (0 = full depth); more is extrapolated."}
    )
    repeats: int = field(default=3, metadata={"help": "Timed runs per configuration (>= 1); median and min/max."})
    warmup: int = field(default=1, metadata={"help": "Untimed runs per configuration before timing (>= 0)."})
    decode_tokens: int = field(
        default=8, metadata={"help": "New tokens of the decode-speed run (0 = skip it, else >= 3)."}
    )
    text_tokens: int = field(default=64, metadata={"help": "Non-visual tokens of the prompt (>= 8)."})
    dtype: str = field(default="bfloat16", metadata={"help": f"Model dtype, one of {sorted(DTYPES)}."})
    device: str = field(default="auto", metadata={"help": "`cpu`, `cuda` or `auto` (cuda when available)."})
    attn_implementation: str = field(default="sdpa", metadata={"help": "`sdpa`, `eager` or `flash_attention_2`."})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch (0 = torch's default)."})
    output: str | None = field(
        default=None,
        metadata={
            "help": "JSON results (default bench.json; with --report only if given); the markdown tables and "
            "plots go beside it (.md, .png)."
        },
    )
    doc: str | None = field(
        default=None, metadata={"help": "Also write this full report (e.g. docs/benchmarks.md) from the results."}
    )
    report: str | None = field(
        default=None,
        metadata={"help": "Comma-separated JSON files of earlier runs: merge them and write the outputs, run nothing."},
    )
    profile: bool = field(
        default=False, metadata={"help": "Profile unpruned vs pruned language-model prefill (torch.profiler)."}
    )
    profile_method: str | None = field(
        default=None, metadata={"help": "Method of the profiled pruned prefill (default: the first of --methods)."}
    )
    profile_budget: str = field(
        default="0.2",
        metadata={"help": "Comma-separated budgets of the profiled pruned prefill; FLOPs are counted at the first."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random weights and inputs."})
    fit_memory_mib: int = field(
        default=0,
        metadata={
            "help": "What fits: the largest batch of the preset's input whose generate stays within this many MiB above "
            "the memory in use before it (measured, binary search at the built depth), unpruned and for the first "
            "method at every budget (0 = skip)."
        },
    )
    fit_max_batch: int = field(default=32, metadata={"help": "Largest batch the what-fits search tries (>= 1)."})
    tag: str = field(
        default="",
        metadata={"help": "Words added to the run's label (e.g. `float32`), telling apart two runs of one preset."},
    )


def _split(value: str, flag: str) -> list[str]:
    items = [item.strip() for item in str(value).split(",") if item.strip()]
    if not items:
        raise ValueError(f"`{flag}` is empty; give a comma-separated list")
    return items


def parse_budgets(value: str, flag: str = "--budgets", allow_auto: bool = True) -> list[float | AutoBudget]:
    """Fractions in (0, 1], and (where allowed) 'auto[:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]]' as `AutoBudget`s."""
    budgets = []
    for item in _split(value, flag):
        if allow_auto and item.startswith("auto"):
            budgets.append(check_budget(item, flag))
            continue
        try:
            budget = float(item)
        except ValueError:
            allowed = "a float in (0, 1]" + (
                " or 'auto[:THRESHOLD[:MIN_FRACTION[:MAX_FRACTION]]]'" if allow_auto else ""
            )
            raise ValueError(f"`{flag}`: {item!r} is not a number; each budget is {allowed}") from None
        if math.isnan(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"`{flag}`: {item} is outside (0, 1] (a fraction of each image's tokens)")
        budgets.append(budget)
    return budgets


def parse_methods(value: str) -> list[str]:
    methods = _split(value, "--methods")
    known = available_selectors()
    for method in methods:
        if method not in known:
            raise ValueError(f"`--methods`: unknown method {method!r}; registered selectors: {known}")
    return methods


def parse_presets(value: str) -> list[Preset]:
    names = _split(value, "--preset")
    for name in names:
        if name not in PRESETS:
            raise ValueError(f"`--preset`: unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return [PRESETS[name] for name in names]


def _depth(requested: int, full: int, flag: str, preset: Preset) -> int:
    if not 0 <= requested <= full:
        raise ValueError(f"`{flag}` must be in [0, {full}] for {preset.name} (0 = full depth), got {requested}")
    return requested or full


def check_arguments(args: BenchArguments) -> dict[str, Any]:
    """Validate every flag before any model is built; returns the parsed values."""
    if args.report is not None:
        files = [Path(path) for path in _split(args.report, "--report")]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise ValueError(f"`--report`: no such file(s): {missing}")
        return {"report": files}
    presets, methods, budgets = parse_presets(args.preset), parse_methods(args.methods), parse_budgets(args.budgets)
    if any(isinstance(budget, AutoBudget) for budget in budgets):
        unscored = [method for method in methods if not get_selector_class(method).produces_scores()]
        if unscored:
            raise ValueError(
                f"`--budgets` has an 'auto' budget, which a method chooses from its token scores, but {unscored} "
                "score no tokens; run them with fixed budgets"
            )
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise ValueError(f"`--warmup` must be >= 0, got {args.warmup}")
    if args.decode_tokens != 0 and args.decode_tokens < 3:
        raise ValueError(f"`--decode-tokens` must be 0 (skip) or >= 3, got {args.decode_tokens}")
    if args.threads < 0:
        raise ValueError(f"`--threads` must be >= 0 (0 = torch's default), got {args.threads}")
    if args.fit_memory_mib < 0:
        raise ValueError(f"`--fit-memory-mib` must be >= 0 (0 = skip), got {args.fit_memory_mib}")
    if args.fit_max_batch < 1:
        raise ValueError(f"`--fit-max-batch` must be >= 1, got {args.fit_max_batch}")
    if args.text_tokens < 8:
        raise ValueError(f"`--text-tokens` must be >= 8, got {args.text_tokens}")
    if args.dtype not in DTYPES:
        raise ValueError(f"`--dtype` must be one of {sorted(DTYPES)}, got {args.dtype!r}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"`--device` must be `auto`, `cpu` or `cuda`, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`--device cuda` was given but CUDA is not available")
    if args.profile:
        if args.profile_method is not None:
            parse_methods(args.profile_method)
        parse_budgets(args.profile_budget, "--profile-budget", allow_auto=False)
    depths = {}
    for preset in presets:
        layers = _depth(args.layers, preset.full_layers, "--layers", preset)
        vision_layers = _depth(args.vision_layers, preset.full_vision_layers, "--vision-layers", preset)
        reduced = preset.block_kinds(preset.make_config(layers, vision_layers).vision_config)
        full = preset.block_kinds(preset.make_config(1, preset.full_vision_layers).vision_config)
        if not set(full) <= set(reduced):
            raise ValueError(
                f"`--vision-layers` {vision_layers} is too shallow for {preset.name}: every block kind of the full "
                f"tower ({sorted(set(full))}) must be measured to extrapolate; use at least {len(set(full))}"
            )
        for method in methods:  # an in-LLM method (fastv) needs a built layer past its K
            selector_cls = get_selector_class(method)
            if selector_cls.in_llm:
                selector = selector_cls(TokenPruneConfig(method=method), input_dim=1, llm_hidden_size=1)
                try:
                    selector.check_layer(layers)
                except ValueError as error:
                    raise ValueError(
                        f"`--layers` {layers} is too shallow for {method} on {preset.name}: it drops tokens after "
                        f"decoder layer {selector.config.layer}, so build at least {selector.config.layer + 1} layers "
                        "(0 = full depth)"
                    ) from error
        depths[preset.name] = (layers, vision_layers)
    device_name = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    return {"presets": presets, "methods": methods, "budgets": budgets, "depths": depths, "device": device}


def command_line(args: BenchArguments) -> str:
    """The `hf-tokenprune bench` command that reproduces a run."""
    flags = [
        ("preset", args.preset),
        ("methods", args.methods),
        ("budgets", args.budgets),
        ("layers", args.layers),
        ("vision-layers", args.vision_layers),
        ("repeats", args.repeats),
        ("warmup", args.warmup),
        ("decode-tokens", args.decode_tokens),
        ("text-tokens", args.text_tokens),
        ("dtype", args.dtype),
        ("output", args.output or "bench.json"),
    ]
    if args.device != "auto":
        flags.append(("device", args.device))
    if args.attn_implementation != "sdpa":
        flags.append(("attn-implementation", args.attn_implementation))
    if args.threads:
        flags.append(("threads", args.threads))
    if args.fit_memory_mib:
        flags += [("fit-memory-mib", args.fit_memory_mib), ("fit-max-batch", args.fit_max_batch)]
    if args.tag:
        flags.append(("tag", f"'{args.tag}'"))
    if args.profile:
        flags += [("profile-method", args.profile_method), ("profile-budget", args.profile_budget)]
    command = "hf-tokenprune bench " + " ".join(f"--{name} {value}" for name, value in flags if value is not None)
    return command + (" --profile" if args.profile else "")
