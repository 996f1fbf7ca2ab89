"""Timing probes and one measurement: where the time of a `generate` call goes.

Forward hooks on the stock vision modules, the language model and every block mark spans on one clock
(`time.perf_counter` on CPU, CUDA events on CUDA, or a FLOP counter); a wrapper around the selector's
`select_segments` (one call per forward, every image and frame) marks selection. `measure_ttft` / `measure_decode` run one `generate` and split it by those spans;
`DepthMap` extrapolates a shallower model's spans to full depth.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ..cost import cache_bytes, cache_layer_bytes
from .presets import Preset


def extrapolate_full_depth(
    measured_ms: float, block_ms: dict[str, list[float]], full_block_counts: dict[str, int]
) -> float:
    """Full-depth time of a stack from one run of a shallower copy.

    The part outside the blocks (embeddings, rotary tables, masks, final norm, projector) is kept as measured;
    each block kind is charged its mean measured time per block times its count at full depth. With every
    block present it returns `measured_ms` unchanged.
    """
    fixed = measured_ms - sum(sum(times) for times in block_ms.values())
    return fixed + sum(count * statistics.fmean(block_ms[kind]) for kind, count in full_block_counts.items() if count)


class Clock:
    """Marks on one timeline: `time.perf_counter` on CPU, CUDA events on CUDA (read after one synchronize)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class FlopClock:
    """A clock whose marks are the FLOPs a `FlopCounterMode` has counted so far: spans measure FLOPs, not time."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def mark(self) -> int:
        return self.counter.get_total_flops()

    def ms(self, start: int, end: int) -> float:
        return float(end - start)

    def synchronize(self) -> None:
        pass


@dataclass
class Span:
    kind: str  # vision | vision_block | selection | llm | llm_layer
    index: int  # block index within its stack
    call: int  # language-model call (0 = prefill, then one per decode step) that was running or last started
    start: Any
    end: Any


#: The selector methods a forward calls to select (one per forward): fixed budgets, and "auto" ones.
SELECTION_ENTRIES = ("select_segments", "select_segments_auto")


class PipelineProbe:
    """Forward hooks on the stock vision modules, language model and every block, and a timed `select_segments` wrapper.

    Hooks go on the base model's submodules, which every pruned model made from it shares.
    """

    def __init__(self, model: PreTrainedModel, preset: Preset, clock: Clock) -> None:
        self.clock, self.spans, self.handles, self.llm_calls = clock, [], [], 0
        self.llm_starts: list[Any] = []
        self.selectors: list[nn.Module] = []
        #: id(selector) -> the (args, kwargs) of its last `select_segments` call, to count its FLOPs afterwards.
        self.selection_inputs: dict[int, tuple[tuple, dict]] = {}
        inner = model.model
        for name in preset.vision_modules:
            self._watch(inner.get_submodule(name), "vision")
        for index, block in enumerate(inner.get_submodule(preset.vision_blocks)):
            self._watch(block, "vision_block", index)
        language_model = inner.get_decoder()  # `language_model`, or `text_model` in the Idefics3 family
        self._watch(language_model, "llm")
        for index, layer in enumerate(language_model.layers):
            self._watch(layer, "llm_layer", index)

    def _watch(self, module: nn.Module, kind: str, index: int = 0) -> None:
        starts: list[Any] = []

        def before(_module, _args):
            if kind == "llm":
                self.llm_calls += 1
                self.llm_starts.append(self.clock.mark())
                starts.append(self.llm_starts[-1])
            else:
                starts.append(self.clock.mark())

        def after(_module, _args, _output):
            self.spans.append(Span(kind, index, self.llm_calls - 1, starts.pop(), self.clock.mark()))

        self.handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]

    def time_selector(self, selector: nn.Module) -> None:
        """Wrap `selector.select_segments` and `select_segments_auto` (an "auto" budget's entry) through instance
        attributes (replacing another probe's wrappers)."""
        for name in SELECTION_ENTRIES:
            select = selector.__dict__.setdefault(f"_unprobed_{name}", getattr(selector, name))

            def timed_select(*args, _select=select, _name=name, **kwargs):
                start = self.clock.mark()
                keep_indices = _select(*args, **kwargs)
                self.spans.append(Span("selection", 0, self.llm_calls - 1, start, self.clock.mark()))
                self.selection_inputs[id(selector)] = (_name, args, kwargs)
                return keep_indices

            setattr(selector, name, timed_select)
        self.selectors.append(selector)

    def reset(self) -> None:
        self.spans, self.llm_calls, self.llm_starts = [], 0, []

    def total(self, kind: str, call: int | None = None) -> float:
        return sum(self.clock.ms(s.start, s.end) for s in self.spans if s.kind == kind and call in (None, s.call))

    def blocks(self, kind: str, call: int | None = None) -> list[tuple[int, float]]:
        return [
            (s.index, self.clock.ms(s.start, s.end)) for s in self.spans if s.kind == kind and call in (None, s.call)
        ]

    def remove(self) -> None:
        """Remove the hooks and restore every wrapped `select_segments`."""
        for handle in self.handles:
            handle.remove()
        for selector in self.selectors:
            for name in SELECTION_ENTRIES:
                selector.__dict__.pop(name, None)
                selector.__dict__.pop(f"_unprobed_{name}", None)
        self.handles, self.selectors = [], []


class PeakMemory:
    """Peak memory during a block: CUDA `max_memory_allocated`, or on CPU the process RSS sampled every 2 ms (psutil)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "cuda_max_memory_allocated" if self.cuda else "cpu_process_rss_peak"
        self.start = self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        process, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = process.memory_info().rss

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, process.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
        self._stop.set()
        self._thread.join()


@dataclass
class Configuration:
    """One row of the table: `method` None is the unpruned base model."""

    method: str | None
    budget: float | None
    model: PreTrainedModel
    timings: list[dict[str, Any]] = field(default_factory=list)
    kept_tokens: int = 0
    kept_per_sample: list[int] = field(default_factory=list)
    selection_flops: int = 0
    selection_call: tuple[str, tuple, dict] | None = None  # the recorded selection call, until its FLOPs are counted
    kv_bytes: tuple[int, int] = (0, 0)
    kv_layer_bytes: list[int] = field(default_factory=list)
    decode: dict[str, Any] = field(default_factory=dict)
    #: decoder layers that see every token (an in-LLM method's K, e.g. fastv's; 0 when pruning precedes the LLM).
    unpruned_layers: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        return {} if self.method is None else {"prune_budget": self.budget}


@dataclass
class DepthMap:
    """How the built model's stacks map to the full-depth model.

    built_kinds: kind of every vision block as built; full_counts: vision blocks per kind at full depth.
    """

    built_kinds: list[str]
    full_counts: dict[str, int]
    full_layers: int

    def full_depth(self, timing: dict[str, Any], unpruned_layers: int = 0) -> dict[str, float]:
        """One measurement at the built depth -> vision / selection / prefill / other / TTFT at full depth.

        unpruned_layers: the first decoder layers that see every token (an in-LLM method's K): they are charged as
        measured, and the mean of the later, pruned layers extrapolates the rest of the depth.
        """
        blocks_by_kind: dict[str, list[float]] = {}
        for index, value in timing["vision_blocks"].items():
            blocks_by_kind.setdefault(self.built_kinds[index], []).append(value)
        vision = extrapolate_full_depth(timing["vision_ms"], blocks_by_kind, self.full_counts)
        layers = timing["llm_layers"]
        prefill = extrapolate_full_depth(
            timing["prefill_ms"],
            {"unpruned": layers[:unpruned_layers], "layer": layers[unpruned_layers:]},
            {"unpruned": unpruned_layers, "layer": self.full_layers - unpruned_layers},
        )
        ttft = timing["ttft_ms"] - timing["vision_ms"] - timing["prefill_ms"] + vision + prefill
        return {
            "vision_ms": vision,
            "selection_ms": timing["selection_ms"],
            "prefill_ms": prefill,
            "other_ms": ttft - vision - timing["selection_ms"] - prefill,
            "ttft_ms": ttft,
        }


def measure_ttft(config: Configuration, inputs, probe: PipelineProbe, keep: bool) -> dict[str, Any]:
    """One `generate(max_new_tokens=1)`, split by the probe's spans (at the built depth, in the probe clock's unit)."""
    clock = probe.clock
    probe.reset()
    clock.synchronize()
    start = clock.mark()
    output = config.model.generate(**inputs, **config.generate_kwargs(), max_new_tokens=1, return_dict_in_generate=True)
    end = clock.mark()
    clock.synchronize()
    if keep:
        visual = visual_mask(config.model, inputs["input_ids"])
        keep_mask = output.get("keep_mask")
        kept = visual if keep_mask is None else keep_mask & visual
        config.kept_tokens = int(kept.sum())
        config.kept_per_sample = kept.sum(-1).tolist()
        config.kv_bytes = cache_bytes(output.past_key_values)
        config.kv_layer_bytes = cache_layer_bytes(output.past_key_values)
    vision_blocks: dict[int, float] = {}
    for index, value in probe.blocks("vision_block"):
        vision_blocks[index] = vision_blocks.get(index, 0.0) + value
    return {
        "ttft_ms": clock.ms(start, end),
        "vision_ms": probe.total("vision"),
        "selection_ms": probe.total("selection"),
        "prefill_ms": probe.total("llm", call=0),
        "llm_layers": [value for _, value in probe.blocks("llm_layer", call=0)],
        "vision_blocks": vision_blocks,
    }


def measure_decode(config: Configuration, inputs, probe: PipelineProbe, tokens: int, device) -> dict[str, Any]:
    """A `generate(max_new_tokens=tokens)`: step times between consecutive language-model calls, and peak memory."""
    clock = probe.clock
    probe.reset()
    with PeakMemory(device) as memory:
        config.model.generate(**inputs, **config.generate_kwargs(), max_new_tokens=tokens, min_new_tokens=tokens)
    clock.synchronize()
    steps = []
    for call in range(1, len(probe.llm_starts) - 1):  # call k starts decode step k; the next call's start ends it
        step_ms = clock.ms(probe.llm_starts[call], probe.llm_starts[call + 1])
        # The extrapolated layers are the pruned ones: those past an in-LLM method's K.
        layer_ms = [value for index, value in probe.blocks("llm_layer", call=call) if index >= config.unpruned_layers]
        steps.append((step_ms, statistics.fmean(layer_ms)))
    return {
        "steps": steps,
        "peak_memory_bytes": memory.peak,
        "peak_memory_delta_bytes": memory.peak - memory.start,
        "peak_memory_kind": memory.kind,
    }


def _attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode has no formula for the CPU flash-attention kernel: QK^T and AV, 2 FLOPs per multiply-add."""
    batch, heads, query_length, head_dim = query
    return 2 * 2 * batch * heads * query_length * key[-2] * head_dim


@contextlib.contextmanager
def flop_counter():
    """A no-grad `FlopCounterMode` that sees what torch's counter alone does not: the CPU flash-attention kernel (a
    formula added) and the fused encoder-layer fast path (turned off while counting)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _attention_flops
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def selection_flops(selector: nn.Module, call: tuple[str, tuple, dict]) -> int:
    """FLOPs of one selection call (`select_segments` or `select_segments_auto`, as recorded: (name, args, kwargs))
    replayed on its recorded inputs under `flop_counter` (2 per multiply-add)."""
    name, args, kwargs = call
    with flop_counter() as counter:
        selector.__dict__.get(f"_unprobed_{name}", getattr(selector, name))(*args, **kwargs)
    return counter.get_total_flops()


def visual_mask(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) True at image and video placeholders (the video id where the architecture has one)."""
    token_ids = [model.config.image_token_id, getattr(model.config, "video_token_id", None)]
    return torch.isin(input_ids, torch.tensor([t for t in token_ids if t is not None], device=input_ids.device))


def pruning_selector(model: PreTrainedModel, budget: float) -> nn.Module:
    # `resolve_pruning` returns the selector instance `generate` will call (attached or transient).
    return model.resolve_pruning(budget, None)[1]
