"""`run_bench`: validate the flags, build each preset, time every configuration, write the outputs.

What one measurement is: `model.generate(**inputs, prune_budget=b, max_new_tokens=1)`, exactly what a
user runs, timed end to end (time to first token), with its time attributed by forward hooks on the
stock vision modules and language model and by a wrapper around the selector's `select` (`probes`). The
FLOPs model of paper 001 (Sec. 5.3, `hf_tokenprune.cost`) gives the ideal prefill speed-up; the measured
one is compared against it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import PretrainedConfig, PreTrainedModel

from ..cost import ideal_batch_prefill_ratio, predicted_kv_cache_bytes
from ..model import get_pruned_model
from ..modeling.configuration_token_prune import AutoBudget, TokenPruneConfig
from .arguments import DTYPES, BenchArguments, check_arguments, command_line, parse_budgets
from .memory import largest_batch
from .outputs import tag_rows, write_outputs
from .presets import Preset, vision_depth
from .probes import (
    Clock,
    Configuration,
    DepthMap,
    PipelineProbe,
    measure_decode,
    measure_ttft,
    pruning_selector,
    selection_flops,
    visual_mask,
)
from .profile import profile_prefill
from .report import render_doc

SCHEMA_VERSION = 1
#: New tokens of every what-fits probe: the prefill and one decode step on the cache it filled.
FIT_NEW_TOKENS = 2


def build_model(
    preset: Preset, layers: int, vision_layers: int, dtype: torch.dtype, device: torch.device, attn: str, seed: int
) -> PreTrainedModel:
    """The preset's stock model class with random weights (its own `_init_weights`), in `dtype` on `device`."""
    config = preset.make_config(layers, vision_layers)
    torch.manual_seed(seed)
    with torch.device(device):
        model = preset.model_cls._from_config(config, dtype=dtype, attn_implementation=attn)
    model.eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # a fixed number of new tokens
    model.generation_config.do_sample = False
    return model


def row_budget(budget: float | AutoBudget | None) -> float | str:
    """A row's `budget`: the fraction (1.0 unpruned), or an "auto" budget as its string (`AutoBudget.__str__`)."""
    if budget is None:
        return 1.0
    return str(budget) if isinstance(budget, AutoBudget) else budget


def _median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run_preset(
    preset: Preset,
    methods: list[str],
    budgets: list[float],
    layers: int,
    vision_layers: int,
    args: BenchArguments,
    device: torch.device,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the preset, time every configuration round-robin, and return (run record, rows)."""
    from tqdm.auto import tqdm

    dtype = DTYPES[args.dtype]
    load_start = _load_average()
    started = time.perf_counter()
    base = build_model(preset, layers, vision_layers, dtype, device, args.attn_implementation, args.seed)
    build_seconds = time.perf_counter() - started
    inputs = preset.make_inputs(base.config, args.text_tokens, torch.Generator().manual_seed(args.seed))
    inputs = {
        name: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
        for name, value in inputs.items()
    }
    probe = PipelineProbe(base, preset, Clock(device))
    configurations = [Configuration(None, None, base)]
    selector_sizes = {}
    for method in methods:
        pruned = get_pruned_model(base, TokenPruneConfig(method=method))
        # A learned scorer's width and depth as built (its method's defaults at the time): the run's cost depends on them.
        sizes = {
            name: getattr(pruned.token_prune_config, name)
            for name in ("scorer_hidden_size", "scorer_num_layers", "scorer_num_heads")
            if getattr(pruned.token_prune_config, name, None) is not None
        }
        if sizes:
            selector_sizes[method] = sizes
        for budget in budgets:
            selector = pruning_selector(pruned, budget)
            probe.time_selector(selector)
            unpruned_layers = selector.check_layer(layers) if selector.in_llm else 0  # its K
            configurations.append(Configuration(method, budget, pruned, unpruned_layers=unpruned_layers))

    rounds = ["warmup"] * args.warmup + ["timed"] * args.repeats
    progress = tqdm(total=len(rounds) * len(configurations), desc=f"bench {preset.name}", unit="run")
    # Round-robin (every configuration once per round) so drifting machine load hits every row alike.
    for round_index, phase in enumerate(rounds):
        for config in configurations:
            timing = measure_ttft(config, inputs, probe, keep=round_index == args.warmup)
            if round_index == args.warmup and config.method is not None:
                selector = pruning_selector(config.model, config.budget)
                config.selection_call = probe.selection_inputs.pop(id(selector), None)
            if phase == "timed":
                config.timings.append(timing)
            progress.update()
    progress.close()
    for config in configurations:
        if config.selection_call is not None:
            config.selection_flops = selection_flops(
                pruning_selector(config.model, config.budget), config.selection_call
            )
            config.selection_call = None
    if args.decode_tokens:
        if args.warmup:
            # One untimed decode first, as the prefill rounds have warm-up runs: without it, on an H100 the first two
            # configurations' decode (unpruned, then the first method) measured 2-3x slower than the others (first use of
            # the decode step's kernels, probably; not profiled).
            measure_decode(configurations[0], inputs, probe, args.decode_tokens, device)
        for config in tqdm(configurations, desc=f"decode {preset.name}", unit="run"):
            config.decode = measure_decode(config, inputs, probe, args.decode_tokens, device)
    probe.remove()
    what_fits = None
    if args.fit_memory_mib:
        # Unpruned and the first method at every budget: each search runs the pipeline several times at growing batch.
        searched = [config for config in configurations if config.method in (None, methods[0])]
        what_fits = {
            "budget_mib": args.fit_memory_mib,
            "new_tokens": FIT_NEW_TOKENS,
            "max_batch": args.fit_max_batch,
            "layers": layers,
            "rows": [
                {"method": config.method or "unpruned", "budget": row_budget(config.budget)}
                | largest_batch(config, inputs, args.fit_memory_mib * 2**20, FIT_NEW_TOKENS, device, args.fit_max_batch)
                for config in tqdm(searched, desc=f"what fits {preset.name}", unit="search")
            ],
        }

    full_config = preset.make_config(preset.full_layers, preset.full_vision_layers)
    full_kinds = preset.block_kinds(full_config.vision_config)
    depth = DepthMap(
        preset.block_kinds(base.config.vision_config),
        {kind: full_kinds.count(kind) for kind in set(full_kinds)},
        preset.full_layers,
    )
    rows = _rows(preset, configurations, depth, base, full_config, inputs, args)
    run = {
        "preset": preset.name,
        "description": preset.description,
        "source": preset.source,
        "methods": methods,
        "budgets": [row_budget(budget) for budget in budgets],
        "settings": {
            key: getattr(args, key)
            for key in (
                "layers",
                "vision_layers",
                "repeats",
                "warmup",
                "decode_tokens",
                "text_tokens",
                "dtype",
                "attn_implementation",
                "seed",
                "tag",
            )
        },
        "workload": preset.workload,
        "widths": _widths(full_config),
        "machine": machine_info(device) | {"load_average_start": load_start, "load_average_end": _load_average()},
        "selector_sizes": selector_sizes,
        "decode_warmup": bool(args.decode_tokens and args.warmup),  # an untimed decode ran before the timed ones
        "build_seconds": build_seconds,
        "wall_seconds": time.perf_counter() - started,
    }
    if what_fits is not None:
        run["what_fits"] = what_fits
    if args.profile:
        run["profile"] = profile_prefill(
            preset,
            base,
            args.profile_method or methods[0],
            parse_budgets(args.profile_budget, "--profile-budget", allow_auto=False),
            methods,
            inputs,
            depth,
        )
        run["profile"]["layers"] = layers
    return run, rows


def _rows(preset, configurations, depth: DepthMap, base, full_config, inputs, args) -> list[dict[str, Any]]:
    dtype = DTYPES[args.dtype]
    layers = base.config.get_text_config().num_hidden_layers
    vision_layers = vision_depth(base.config.vision_config)
    visual = visual_mask(base, inputs["input_ids"])
    visual_tokens = int(visual.sum())
    # Per sample (a batch preset holds several): real tokens are the attention mask's, padding is not text.
    visual_per_sample = visual.sum(-1).tolist()
    text_per_sample = (inputs["attention_mask"].sum(-1) - visual.sum(-1)).tolist()
    text_tokens = sum(text_per_sample)
    batch = inputs["input_ids"].shape[0]
    rows, unpruned = [], None
    for config in configurations:
        unpruned_layers = config.unpruned_layers
        per_repeat = [depth.full_depth(timing, unpruned_layers) for timing in config.timings]
        summary = {name: _median_min_max([r[name] for r in per_repeat]) for name in per_repeat[0]}
        unpruned = unpruned or summary
        measured = {
            name: statistics.median(t[name] for t in config.timings)
            for name in ("ttft_ms", "vision_ms", "selection_ms", "prefill_ms")
        }
        measured["prefill_layer_ms"] = statistics.median(statistics.fmean(t["llm_layers"]) for t in config.timings)
        measured["prefill_outside_layers_ms"] = statistics.median(
            t["prefill_ms"] - sum(t["llm_layers"]) for t in config.timings
        )
        kept = config.kept_tokens
        kv_bytes, kv_tokens = config.kv_bytes
        # A left-padded batch caches every row at the longest kept sample's length.
        cached = max(t + k for t, k in zip(text_per_sample, config.kept_per_sample, strict=True))
        cached_unpruned = max(t + v for t, v in zip(text_per_sample, visual_per_sample, strict=True))
        kv_layer_bytes = config.kv_layer_bytes
        row = {
            "preset": preset.name,
            "method": config.method or "unpruned",
            "budget": row_budget(config.budget),
            "visual_tokens": visual_tokens,
            "text_tokens": text_tokens,
            "kept_tokens": kept,
            **{name: values[0] for name, values in summary.items()},
            "ideal_prefill_ratio": ideal_batch_prefill_ratio(
                text_per_sample, visual_per_sample, config.kept_per_sample, full_config, unpruned_layers
            ),
            "ideal_prefill_ratio_visual_only": ideal_batch_prefill_ratio(
                [0] * batch, visual_per_sample, config.kept_per_sample, full_config, unpruned_layers
            ),
            "measured_prefill_ratio": unpruned["prefill_ms"][0] / summary["prefill_ms"][0],
            "ttft_speedup": unpruned["ttft_ms"][0] / summary["ttft_ms"][0],
            "kv_cache_bytes": kv_bytes,
            "kv_cache_tokens": kv_tokens,
            "kv_cache_bytes_predicted": batch
            * predicted_kv_cache_bytes(base.config, cached, dtype, cached_unpruned, unpruned_layers),
            # Layers before an in-LLM method's K hold every token: they are counted as measured, the rest by the mean.
            "kv_cache_bytes_full_depth": sum(kv_layer_bytes[:unpruned_layers])
            + sum(kv_layer_bytes[unpruned_layers:])
            * (preset.full_layers - unpruned_layers)
            // (layers - unpruned_layers),
            "kv_cache_bytes_predicted_full_depth": batch
            * predicted_kv_cache_bytes(full_config, cached, dtype, cached_unpruned, unpruned_layers),
            "unpruned_layers": unpruned_layers,
            "extrapolated": layers < preset.full_layers or vision_layers < preset.full_vision_layers,
            "layers": layers,
            "full_layers": preset.full_layers,
            "vision_layers": vision_layers,
            "full_vision_layers": preset.full_vision_layers,
            "repeats": len(config.timings),
            "spread": {name: [values[1], values[2]] for name, values in summary.items()},
            "measured": measured,
        }
        row["measured_over_ideal"] = row["measured_prefill_ratio"] / row["ideal_prefill_ratio"]
        row["selection_share_of_ttft"] = row["selection_ms"] / row["ttft_ms"]
        row["selection_gflop"] = config.selection_flops / 1e9
        row["selection_gflop_per_s"] = config.selection_flops / 1e6 / row["selection_ms"] if row["selection_ms"] else 0
        row["batch_size"] = batch
        if preset.workload == "batch":  # one image per sample
            row["images_per_s"] = 1e3 * batch / row["ttft_ms"]
        if config.decode:
            steps = config.decode["steps"]
            row["decode_tokens_per_s"] = 1e3 / statistics.median(
                step + (preset.full_layers - layers) * layer for step, layer in steps
            )
            row["measured"]["decode_step_ms"] = statistics.median(step for step, _ in steps)
            for key in ("peak_memory_bytes", "peak_memory_delta_bytes", "peak_memory_kind"):
                row[key] = config.decode[key]
        rows.append(row)
    return rows


def _widths(config: PretrainedConfig) -> dict[str, Any]:
    text, vision = config.get_text_config(), config.vision_config
    return {
        "llm_hidden_size": text.hidden_size,
        "llm_intermediate_size": text.intermediate_size,
        "llm_layers": text.num_hidden_layers,
        "llm_heads": text.num_attention_heads,
        "llm_kv_heads": text.num_key_value_heads,
        "vocab_size": text.vocab_size,
        "vision_hidden_size": vision.hidden_size,
        "vision_intermediate_size": vision.intermediate_size,
        "vision_layers": vision_depth(vision),
    }


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, Any]:
    import psutil

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(args: BenchArguments) -> dict[str, Any]:
    """`hf-tokenprune bench`: validate every flag, run each preset (or merge `--report` files), write the outputs."""
    parsed = check_arguments(args)
    sources: list[str] = []
    if "report" in parsed:
        runs, rows = [], []
        for path in parsed["report"]:
            data = json.loads(path.read_text())
            tag_rows(data["runs"], data["rows"])
            runs += data["runs"]
            rows += data["rows"]
            sources.append(str(path))
        results = {"schema_version": SCHEMA_VERSION, "runs": runs, "rows": rows}
        if args.output is not None:
            print(write_outputs(results, Path(args.output)))
    else:
        results = {"schema_version": SCHEMA_VERSION, "runs": [], "rows": []}
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)
        try:
            for preset in parsed["presets"]:
                layers, vision_layers = parsed["depths"][preset.name]
                run, rows = run_preset(
                    preset, parsed["methods"], parsed["budgets"], layers, vision_layers, args, parsed["device"]
                )
                run["command"] = command_line(args)
                tag_rows([run], rows)
                results["runs"].append(run)
                results["rows"] += rows
        finally:
            torch.set_num_threads(threads)
        print(write_outputs(results, Path(args.output or "bench.json")))
    if args.doc is not None:
        doc = Path(args.doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(render_doc(results, doc.parent, sources))
    return results
