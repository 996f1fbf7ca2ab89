"""What fits: the largest batch whose `generate` stays within a memory budget, found by running it (binary search).

Measured, not computed: every probe runs `generate` on the preset's input repeated `batch` times and reads the peak
memory above the level at its start (`PeakMemory`: CUDA allocator peak, or on CPU the process RSS sampled every
2 ms). The model is the one built (`--layers`), so the figure is at the built depth; the rows say so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from typing import Any

import torch

from .probes import Configuration, PeakMemory


def repeat_batch(inputs: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
    """The one-sample `inputs` as a batch of `batch` identical samples.

    Every bench input has the batch (or, for flattened patches / tiles / grids, the per-image) axis first, so
    repeating along dim 0 is what the stock processors produce for `batch` copies of the sample.
    """
    return {name: value.repeat(batch, *([1] * (value.ndim - 1))) for name, value in inputs.items()}


def release_freed_memory() -> None:
    """Give freed heap memory back to the OS, so the next RSS reading starts from what is really in use.

    glibc keeps freed blocks in its arenas (RSS stays high after a large run) and torch has no CPU allocator
    statistics to read instead; `malloc_trim(0)` is the libc call for this. No-op where libc lacks it.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_above_start(config: Configuration, inputs: dict[str, torch.Tensor], new_tokens: int, device) -> int:
    """Bytes of peak memory above the start of one `generate(max_new_tokens=new_tokens)` on `inputs`."""
    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with PeakMemory(device) as memory, torch.no_grad():
        config.model.generate(
            **inputs, **config.generate_kwargs(), max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
    return memory.peak - memory.start


def largest_batch(
    config: Configuration,
    inputs: dict[str, torch.Tensor],
    budget_bytes: int,
    new_tokens: int,
    device,
    max_batch: int,
) -> dict[str, Any]:
    """The largest batch in [1, max_batch] whose measured peak stays within `budget_bytes`: doubling, then bisection.

    Returns {"largest_batch" (0 when even one sample exceeds the budget), "probes": [[batch, peak bytes], ...],
    "capped": whether `max_batch` fitted (the true largest may be higher)}.
    """
    probes: list[list[int]] = []

    def fits(batch: int) -> bool:
        peak = peak_above_start(config, repeat_batch(inputs, batch), new_tokens, device)
        probes.append([batch, peak])
        return peak <= budget_bytes

    if not fits(1):
        return {"largest_batch": 0, "probes": probes, "capped": False}
    low, high = 1, None  # low fits; high (when known) does not
    while high is None:
        candidate = min(2 * low, max_batch)
        if candidate == low:
            return {"largest_batch": low, "probes": probes, "capped": True}
        if fits(candidate):
            low = candidate
        else:
            high = candidate
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"largest_batch": low, "probes": probes, "capped": False}
