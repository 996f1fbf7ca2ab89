"""`hf-tokenprune bench`: time-to-first-token, selection overhead and KV memory at real model widths.

Every preset is a stock `transformers` VLM with the published widths of a real checkpoint and random
weights, built from a config (no download). Language-model and vision depth can be reduced by flag:
prefill cost is per layer, so the full-depth figures are extrapolated from per-layer times measured by
forward hooks on every block, and the rows say so (`"extrapolated": true`).

Modules, by job: `arguments` (the flags and their validation), `presets` and `inputs` (the models and their
inputs), `probes` (timing hooks and one measurement), `runner` (`run_bench`), `profile` (profiler analysis),
`outputs` (results JSON, tables, plots) and `report` (docs/benchmarks.md from `templates/` and `claims.yaml`).
The cost model (FLOPs, KV bytes) is `hf_tokenprune.cost`.
"""

from .arguments import BenchArguments
from .runner import run_bench

__all__ = ["BenchArguments", "run_bench"]
