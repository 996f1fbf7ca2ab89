"""Profiler analysis: the language-model prefill replayed under `torch.profiler`, counted FLOPs, a GEMM scan.

What `--profile` records in a run (`run["profile"]`); the report turns it into the "Where the prefill time
goes" sections.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from ..model import get_pruned_model
from ..modeling.configuration_token_prune import TokenPruneConfig
from ..modeling.token_selectors import learned_selectors
from .presets import Preset
from .probes import (
    Clock,
    Configuration,
    DepthMap,
    FlopClock,
    PipelineProbe,
    flop_counter,
    measure_ttft,
    pruning_selector,
)

OP_CATEGORIES = (
    ("GEMM (linear / matmul)", ("mm", "linear", "matmul", "gemm")),
    ("attention kernel", ("scaled_dot_product", "flash_attention", "softmax", "attention")),
    ("copies / layout", ("copy", "contiguous", "cat", "clone", "index", "gather", "expand", "transpose")),
    ("elementwise / norm", ("add", "mul", "pow", "mean", "rsqrt", "silu", "neg", "div", "sigmoid", "norm", "exp")),
)


def op_category(name: str) -> str:
    short = name.removeprefix("aten::").lower()
    return next((category for category, needles in OP_CATEGORIES if any(n in short for n in needles)), "other")


def count_flops(config: Configuration, inputs, preset: Preset, depth: DepthMap) -> dict[str, float]:
    """Counted FLOPs of one `generate(max_new_tokens=1)`, split like the timings and extrapolated to full depth."""
    with flop_counter() as counter:
        probe = PipelineProbe(config.model, preset, FlopClock(counter))
        if config.method is not None:
            probe.time_selector(pruning_selector(config.model, config.budget))
        try:
            flops = depth.full_depth(measure_ttft(config, inputs, probe, keep=False))
        finally:
            probe.remove()
    return {name.removesuffix("_ms"): value for name, value in flops.items()}


def profile_prefill(preset, base, method, budgets, methods, inputs, depth: DepthMap) -> dict[str, Any]:
    """Where the time goes: the language-model prefill replayed under torch.profiler, and counted FLOPs.

    The language model's inputs are captured from the real pipeline (unpruned, and `method` at each of
    `budgets`) and replayed once for warm-up and once under the profiler; per-op self times are kept. Counted
    FLOPs (torch FlopCounterMode, full-depth extrapolated) of the whole TTFT are recorded for the unpruned
    model and every learned method at the first budget, split like the timings.
    """
    budget, *more = budgets
    pruned = get_pruned_model(base, TokenPruneConfig(method=method))
    result: dict[str, Any] = {
        "method": method,
        "budget": budget,
        "runs": {
            "unpruned": _profile_llm_prefill(Configuration(None, None, base), inputs),
            "pruned": _profile_llm_prefill(Configuration(method, budget, pruned), inputs),
        },
        "more": [
            {"budget": other, "pruned": _profile_llm_prefill(Configuration(method, other, pruned), inputs)}
            for other in more
        ],
        "flops": {},
    }
    rows = [result["runs"]["unpruned"]["tokens"], result["runs"]["pruned"]["tokens"]]
    result["gemm"] = gemm_scan(base.model.get_decoder(), rows + [more["pruned"]["tokens"] for more in result["more"]])
    flop_configs = [("unpruned", Configuration(None, None, base))] + [
        (name, Configuration(name, budget, get_pruned_model(base, TokenPruneConfig(method=name))))
        for name in methods
        if name in learned_selectors()
    ]
    for name, config in flop_configs:
        result["flops"][name] = count_flops(config, inputs, preset, depth)
    return result


def gemm_scan(language_model: nn.Module, rows: list[int]) -> dict[str, dict[str, float]]:
    """The first MLP projection of the language model alone, as one GEMM of `rows` tokens: median ms and GFLOP/s.

    Tells a row-count effect of the GEMM kernel apart from anything the pipeline does.
    """
    linear = next(module for module in language_model.layers[0].mlp.modules() if isinstance(module, nn.Linear))
    clock = Clock(linear.weight.device)
    result = {}
    for num_rows in sorted(set(rows)):
        hidden = torch.randn(num_rows, linear.in_features, dtype=linear.weight.dtype, device=linear.weight.device)
        times = []
        with torch.no_grad():
            for attempt in range(7):
                clock.synchronize()
                start = clock.mark()
                linear(hidden)
                end = clock.mark()
                clock.synchronize()
                if attempt >= 2:  # two warm-up calls
                    times.append(clock.ms(start, end))
        ms = statistics.median(times)
        flops = 2 * num_rows * linear.in_features * linear.out_features
        result[str(num_rows)] = {"ms": ms, "gflop_per_s": flops / ms / 1e6}
    return result


def _profile_llm_prefill(config: Configuration, inputs) -> dict[str, Any]:
    """Per-op self times of one language-model prefill, replayed from the inputs the real pipeline passes it."""
    from torch.profiler import ProfilerActivity, profile

    language_model = config.model.model.get_decoder()
    cuda = next(language_model.parameters()).device.type == "cuda"
    captured: dict[str, Any] = {}

    def grab(_module, _args, kwargs):
        captured.update({} if captured else kwargs)

    handle = language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        config.model.generate(**inputs, **config.generate_kwargs(), max_new_tokens=1)
    finally:
        handle.remove()
    captured["past_key_values"] = None  # a fresh cache, as at prefill
    with torch.no_grad():
        language_model(**captured)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            language_model(**captured)
    ops = {}
    for event in prof.key_averages():
        self_us = getattr(event, "self_device_time_total", 0) if cuda else event.self_cpu_time_total
        if self_us > 0:
            ops[event.key] = {"ms": self_us / 1e3, "calls": event.count, "category": op_category(event.key)}
    return {"tokens": int(captured["inputs_embeds"].shape[1]), "ops": ops}
