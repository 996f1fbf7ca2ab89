"""Per-run outputs of `hf-tokenprune bench`: the results JSON, its markdown table and one plot per run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any


def format_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def format_mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:,.1f}"


TABLE_COLUMNS = (
    "method",
    "budget",
    "kept / visual",
    "vision ms",
    "selection ms",
    "LLM prefill ms",
    "other ms",
    "TTFT ms [min, max]",
    "ideal prefill x",
    "measured prefill x",
    "measured / ideal",
    "TTFT x",
    "decode tok/s",
    "KV MiB (predicted)",
    "peak MiB",
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows of one preset as a markdown table (full-depth figures; see `extrapolated`)."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for row in rows:
        low, high = row["spread"]["ttft_ms"]
        decode = f"{row['decode_tokens_per_s']:.2f}" if "decode_tokens_per_s" in row else "-"
        peak = format_mib(row["peak_memory_bytes"]) if "peak_memory_bytes" in row else "-"
        cells = (
            row["method"],
            format_budget(row["budget"]),
            f"{row['kept_tokens']} / {row['visual_tokens']}",
            format_ms(row["vision_ms"]),
            format_ms(row["selection_ms"]),
            format_ms(row["prefill_ms"]),
            format_ms(row["other_ms"]),
            f"{format_ms(row['ttft_ms'])} [{format_ms(low)}, {format_ms(high)}]",
            f"{row['ideal_prefill_ratio']:.2f}",
            f"{row['measured_prefill_ratio']:.2f}",
            f"{row['measured_over_ideal']:.2f}",
            f"{row['ttft_speedup']:.2f}",
            decode,
            f"{format_mib(row['kv_cache_bytes_full_depth'])} ({format_mib(row['kv_cache_bytes_predicted_full_depth'])})",
            peak,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_budget(budget: float | str) -> str:
    """A row's budget as the tables print it: a fraction with `g`, an "auto" budget as its string."""
    return budget if isinstance(budget, str) else f"{budget:g}"


def plot_preset(rows: list[dict[str, Any]], path: Path) -> None:
    """Measured vs ideal prefill speed-up per budget, and the time-to-first-token split per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The speed-up curve is over fixed budgets; an "auto" row (a string budget) has no place on its x axis.
    pruned = [row for row in rows if row["method"] != "unpruned" and not isinstance(row["budget"], str)]
    methods = list(dict.fromkeys(row["method"] for row in pruned))
    budgets = sorted({row["budget"] for row in pruned})
    figure, (speed, split) = plt.subplots(1, 2, figsize=(13, 4.8))
    for method in methods:
        points = sorted((row["budget"], row["measured_prefill_ratio"]) for row in pruned if row["method"] == method)
        speed.plot(*zip(*points, strict=True), marker="o", label=method)
    # One ideal line per number of layers that see every token: 0 (pruning before the LLM), or fastv's K.
    for unpruned_layers in sorted({row.get("unpruned_layers", 0) for row in pruned}):
        ideal = sorted(
            {(r["budget"], r["ideal_prefill_ratio"]) for r in pruned if r.get("unpruned_layers", 0) == unpruned_layers}
        )
        label = "FLOPs ideal (paper 001 Sec. 5.3)" + (
            f", first {unpruned_layers} layers unpruned" if unpruned_layers else ""
        )
        speed.plot(*zip(*ideal, strict=True), "k--" if not unpruned_layers else "k:", linewidth=2, label=label)
    speed.set(xlabel="budget (fraction of visual tokens kept)", ylabel="LLM prefill speed-up vs unpruned")
    speed.set_title("language-model prefill speed-up")
    speed.legend(fontsize=8)
    speed.grid(alpha=0.3)
    focus = 0.2 if 0.2 in budgets else budgets[len(budgets) // 2]
    shown = [rows[0]] + [row for row in pruned if row["budget"] == focus]
    labels = ["unpruned"] + [row["method"] for row in shown[1:]]
    bottom = [0.0] * len(shown)
    for part in ("vision_ms", "selection_ms", "prefill_ms", "other_ms"):
        heights = [row[part] / 1e3 for row in shown]
        split.bar(labels, heights, bottom=bottom, label=part.removesuffix("_ms"))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    split.set(ylabel="seconds (full depth)", title=f"time to first token at budget {focus:g}")
    split.tick_params(axis="x", rotation=30)
    split.legend(fontsize=8)
    figure.suptitle(
        f"{rows[0].get('run', rows[0]['preset'])}: "
        f"{'extrapolated to full depth from per-layer times' if rows[0]['extrapolated'] else 'measured at full depth'}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_label(run: dict[str, Any]) -> str:
    """`preset, N CPU threads` or `preset, <GPU>`: what tells two runs of one preset apart."""
    machine = run["machine"]
    where = machine.get("gpu") or f"{machine['torch_threads']} CPU thread{'s' if machine['torch_threads'] > 1 else ''}"
    tag = run.get("settings", {}).get("tag")
    return f"{run['preset']}, {where}" + (f", {tag}" if tag else "")


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def tag_rows(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Set every row's `run` to its run's label (rows of one results file follow their runs, one run per preset)."""
    labels = {run["preset"]: run_label(run) for run in runs}  # one results file: one run per preset
    for row in rows:
        row["run"] = labels[row["preset"]]


def group_by_run(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row.get("run", row["preset"]), []).append(row)
    return grouped


def write_outputs(results: dict[str, Any], output: Path) -> str:
    """JSON at `output`, the markdown tables beside it (.md) and one plot per run (.png, -<run>.png if several)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    sections = []
    grouped = group_by_run(results["rows"])
    for label, rows in grouped.items():
        plot = output.with_name(f"{output.stem}.png" if len(grouped) == 1 else f"{output.stem}-{slug(label)}.png")
        plot_preset(rows, plot)
        sections.append(f"## {label}\n\n{markdown_table(rows)}\n\n![{label}]({plot.name})\n")
    markdown = "\n".join(sections)
    output.with_suffix(".md").write_text(markdown)
    return markdown
