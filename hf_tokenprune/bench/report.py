"""The full report, docs/benchmarks.md, from merged results.

Numbers are computed here; every word of the report and how each number is written live in
`templates/benchmarks.md.jinja`, and the papers' published figures in `claims.yaml`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ..cost import prefill_flops
from ..modeling.token_selectors import learned_selectors
from .outputs import format_budget, format_ms, group_by_run, markdown_table, plot_preset, run_label, slug

PACKAGE_DIR = Path(__file__).parent
ACCEPTANCE_BUDGET = 0.2
SMALL_OP_CATEGORIES = ("elementwise / norm", "copies / layout", "other")


@cache
def environment() -> jinja2.Environment:
    """The Jinja environment of the report: filters `ms` (milliseconds as tables write them), `fmt(spec)` and `budget`
    (a fraction with `g`, an "auto" budget as its string)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # markdown, not HTML
    )
    env.filters["ms"] = format_ms
    env.filters["fmt"] = format
    env.filters["budget"] = format_budget
    return env


@cache
def published_claims() -> list[dict[str, Any]]:
    """The entries of `claims.yaml`: claim, operating_point, published, preset, method, budget, measured."""
    return yaml.safe_load((PACKAGE_DIR / "claims.yaml").read_text(encoding="utf-8"))


def render_doc(results: dict[str, Any], plot_dir: Path, sources: list[str]) -> str:
    """The whole report (docs/benchmarks.md); plots are written to `plot_dir`."""
    grouped = group_by_run(results["rows"])
    runs = {run_label(run): run for run in results["runs"]}
    sections = []
    for label, rows in grouped.items():
        run = runs[label]
        plot = plot_dir / f"benchmarks-{slug(label)}.png"
        plot_preset(rows, plot)
        profiles = []
        if "profile" in run:
            profile = run["profile"]
            views = [profile] + [
                {
                    **profile,
                    "budget": more["budget"],
                    "runs": {**profile["runs"], "pruned": more["pruned"]},
                    "flops": {},
                }
                for more in profile.get("more", [])
            ]
            profiles = [profile_view({**run, "profile": view}, rows) for view in views]
        section = {"label": label, "run": run, "table": markdown_table(rows), "plot": plot.name, "profiles": profiles}
        sections.append(section | {"extrapolated": rows[0]["extrapolated"]})
    return (
        environment()
        .get_template("benchmarks.md.jinja")
        .render(
            acceptance=acceptance(grouped, ACCEPTANCE_BUDGET),
            selection_cost=selection_cost(grouped, ACCEPTANCE_BUDGET),
            decode_memory=decode_memory(grouped, runs),
            decode_unwarmed=[
                label for label, run in runs.items() if not decode_warmed(run) and run["settings"]["decode_tokens"]
            ],
            gpu_prefill=gpu_prefill(grouped, runs, ACCEPTANCE_BUDGET),
            what_fits=[{"label": label, **run["what_fits"]} for label, run in runs.items() if "what_fits" in run],
            throughput=throughput(grouped, runs),
            runs=runs,
            sections=sections,
            thread_comparisons=thread_comparisons(runs, grouped),
            claims=claims(grouped),
            commands=[run["command"] for run in results["runs"]],
            sources=sources,
        )
    )


def acceptance(grouped: dict[str, list[dict[str, Any]]], budget: float) -> list[dict[str, Any]]:
    """Per run with pruned rows at `budget`: those rows, each with `kv_error` (measured / predicted KV bytes - 1) and
    `fastest_over_ideal` (measured / ideal from the fastest repeat of the unpruned and of the pruned prefill)."""
    sections = []
    for label, rows in grouped.items():
        # The fastest repeat of each side is the one the machine disturbed least (a shared machine only adds time).
        fastest_unpruned = rows[0]["spread"]["prefill_ms"][0]
        chosen = [
            row
            | {
                "kv_error": row["kv_cache_bytes"] / row["kv_cache_bytes_predicted"] - 1,
                "fastest_over_ideal": fastest_unpruned / row["spread"]["prefill_ms"][0] / row["ideal_prefill_ratio"],
            }
            for row in rows
            if row["budget"] == budget and row["method"] != "unpruned"
        ]
        if chosen:
            tokens = {"visual_tokens": rows[0]["visual_tokens"], "text_tokens": rows[0]["text_tokens"]}
            sections.append({"label": label, "rows": chosen, **tokens})
    return sections


def selection_cost(grouped: dict[str, list[dict[str, Any]]], budget: float) -> list[dict[str, Any]]:
    """Per run: the learned methods' rows at `budget` that recorded the selector's counted FLOPs."""
    learned = set(learned_selectors())
    sections = []
    for label, rows in grouped.items():
        chosen = [
            row for row in rows if row["method"] in learned and row["budget"] == budget and "selection_gflop" in row
        ]
        if chosen:
            sections.append({"label": label, "rows": chosen})
    return sections


def decode_warmed(run: dict[str, Any]) -> bool:
    """Whether a run's decode speeds can be compared: CPU runs (no cold start measured there), or an untimed decode ran
    first (`decode_warmup`; the CUDA runs of 2026-11-26 had none, and their first two configurations decoded 2-3x
    slower than the rest)."""
    return run["machine"]["device"] != "cuda" or run.get("decode_warmup", False)


def decode_memory(grouped: dict[str, list[dict[str, Any]]], runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Per run with a comparable decode run (`decode_warmed`): each row's full-depth KV bytes and decode speed, and both
    relative to unpruned."""
    sections = []
    for label, rows in grouped.items():
        if "decode_tokens_per_s" not in rows[0] or not decode_warmed(runs[label]):
            continue
        unpruned = rows[0]
        chosen = [
            row
            | {
                "kv_fraction": row["kv_cache_bytes_full_depth"] / unpruned["kv_cache_bytes_full_depth"],
                "decode_speedup": row["decode_tokens_per_s"] / unpruned["decode_tokens_per_s"],
            }
            for row in rows
            if "decode_tokens_per_s" in row
        ]
        sections.append({"label": label, "new_tokens": runs[label]["settings"]["decode_tokens"], "rows": chosen})
    return sections


def gpu_prefill(grouped: dict[str, list[dict[str, Any]]], runs: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    """Per CUDA run: the LLM prefill's time per decoder layer unpruned and for each pre-LLM method at `budget` (their
    range), next to the sequence lengths: where the pruned layer's time stops following its tokens."""
    views = []
    for label, rows in grouped.items():
        if runs[label]["machine"]["device"] != "cuda":
            continue
        pruned = [
            row
            for row in rows
            if row["budget"] == budget and row["method"] != "unpruned" and not row["unpruned_layers"]
        ]
        if not pruned:
            continue
        unpruned = rows[0]
        per_layer = [row["measured"]["prefill_layer_ms"] for row in pruned]
        views.append(
            {
                "label": label,
                "tokens": unpruned["text_tokens"] + unpruned["visual_tokens"],
                "kept": unpruned["text_tokens"] + pruned[0]["kept_tokens"],
                "unpruned_layer_ms": unpruned["measured"]["prefill_layer_ms"],
                "pruned_layer_ms": (min(per_layer), max(per_layer)),
                "measured_over_ideal": (
                    min(r["measured_over_ideal"] for r in pruned),
                    max(r["measured_over_ideal"] for r in pruned),
                ),
            }
        )
    return views


def throughput(grouped: dict[str, list[dict[str, Any]]], runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Per batch run: images per second of every row and its ratio to unpruned."""
    sections = []
    for label, rows in grouped.items():
        if runs[label].get("workload") != "batch":
            continue
        unpruned = rows[0]["images_per_s"]
        chosen = [row | {"speedup": row["images_per_s"] / unpruned} for row in rows]
        sections.append({"label": label, "batch_size": rows[0]["batch_size"], "rows": chosen})
    return sections


def profile_view(run: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the pruned prefill's time goes relative to the ideal, by op category, from the recorded profile."""
    profile = run["profile"]
    unpruned, pruned = profile["runs"]["unpruned"], profile["runs"]["pruned"]
    widths = run["widths"]
    flops = [
        prefill_flops(r["tokens"], widths["llm_hidden_size"], widths["llm_intermediate_size"], profile["layers"])
        for r in (unpruned, pruned)
    ]
    ideal = flops[0] / flops[1]
    totals = {label: sum(op["ms"] for op in r["ops"].values()) for label, r in profile["runs"].items()}
    categories: dict[str, list[float]] = {}
    for index, run_ops in enumerate((unpruned["ops"], pruned["ops"])):
        for op in run_ops.values():
            categories.setdefault(op["category"], [0.0, 0.0])[index] += op["ms"]
    excess_total = totals["pruned"] - totals["unpruned"] / ideal
    category_rows = []
    for category, (u, p) in sorted(categories.items(), key=lambda item: -item[1][0]):
        excess = p - u / ideal
        category_rows.append(
            {
                "name": category,
                "unpruned": u,
                "pruned": p,
                "ratio": u / p if p > 0 else None,
                "ideal": u / ideal,
                "excess": excess,
                "share": 100 * excess / excess_total if excess_total > 0 else None,
            }
        )
    # A category counts when its excess (or saving) is over 1% of the pruned time.
    slower = [
        c for c, (u, p) in categories.items() if p > 0 and u / p < ideal and p - u / ideal > 0.01 * totals["pruned"]
    ]
    faster = [
        c for c, (u, p) in categories.items() if p > 0 and u / p > ideal and u / ideal - p > 0.01 * totals["pruned"]
    ]
    gemm_u, gemm_p = categories.get("GEMM (linear / matmul)", [0.0, 0.0])
    gemm_per_token = None
    if gemm_u and gemm_p:
        per_token = (gemm_u / unpruned["tokens"], gemm_p / pruned["tokens"])
        gemm_per_token = {"unpruned": per_token[0], "pruned": per_token[1], "ratio": per_token[0] / per_token[1]}
    gemm = profile.get("gemm", {})
    gemm_scan = gemm_scan_ratio = None
    if str(unpruned["tokens"]) in gemm and str(pruned["tokens"]) in gemm:
        gemm_scan = [(rows, gemm[rows]["gflop_per_s"]) for rows in sorted(gemm, key=int)]
        gemm_scan_ratio = gemm[str(pruned["tokens"])]["gflop_per_s"] / gemm[str(unpruned["tokens"])]["gflop_per_s"]
    top_ops = []
    for name, op in sorted(pruned["ops"].items(), key=lambda item: -item[1]["ms"])[:12]:
        before = unpruned["ops"].get(name, {"ms": 0.0})["ms"]
        top_ops.append(
            {"name": name, "category": op["category"], "unpruned": before, "pruned": op["ms"], "calls": op["calls"]}
            | {"ratio": before / op["ms"]}
        )
    return {
        "method": profile["method"],
        "budget": profile["budget"],
        "layers": profile["layers"],
        "unpruned_tokens": unpruned["tokens"],
        "pruned_tokens": pruned["tokens"],
        "ideal": ideal,
        "gap": timing_gap(profile, rows),
        "categories": category_rows,
        "total": {
            "unpruned": totals["unpruned"],
            "pruned": totals["pruned"],
            "ratio": totals["unpruned"] / totals["pruned"],
            "ideal": totals["unpruned"] / ideal,
            "excess": excess_total,
        },
        "slower": slower,
        "faster": faster,
        "gemm_per_token": gemm_per_token,
        "gemm_scan": gemm_scan,
        "gemm_scan_ratio": gemm_scan_ratio,
        "top_ops": top_ops,
        "flops": flops_view(profile, rows) if profile["flops"] else None,
    }


def timing_gap(profile: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The measured full-depth gap split into the decoder layers and the part of the language model outside them."""
    pruned = next((r for r in rows if r["method"] == profile["method"] and r["budget"] == profile["budget"]), None)
    if pruned is None:
        return None
    u, p = rows[0]["measured"], pruned["measured"]
    return {
        "method": profile["method"],
        "budget": profile["budget"],
        "measured_ratio": pruned["measured_prefill_ratio"],
        "ideal_ratio": pruned["ideal_prefill_ratio"],
        "measured_over_ideal": pruned["measured_over_ideal"],
        "repeats": pruned["repeats"],
        "full_layers": rows[0]["full_layers"],
        "unpruned": u,
        "pruned": p,
        "layer_ratio": u["prefill_layer_ms"] / p["prefill_layer_ms"],
    }


def flops_view(profile: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counted FLOPs of the whole time to first token (full depth) next to the measured time shares."""
    flops = profile["flops"]
    budget = profile["budget"]
    unpruned = flops["unpruned"]
    methods = []
    for method, counted in flops.items():
        row = next((r for r in rows if r["method"] == method and r["budget"] in (budget, 1.0)), None)

        def rate(part: str, row=row, counted=counted) -> float | None:
            """Achieved GFLOP/s of `part`: counted FLOPs over its measured time."""
            return counted[part] / 1e9 / (row[part + "_ms"] / 1e3) if row and row[part + "_ms"] > 0 else None

        methods.append(
            {
                "method": method,
                "vision_gflop": counted["vision"] / 1e9,
                "selection_gflop": counted["selection"] / 1e9,
                "prefill_gflop": counted["prefill"] / 1e9,
                "ttft_gflop": counted["ttft"] / 1e9,
                "selection_flop_share": 100 * counted["selection"] / counted["ttft"],
                "selection_time_share": 100 * row["selection_share_of_ttft"] if row else None,
                "rates": {part: rate(part) for part in ("selection", "prefill", "vision")},
            }
        )
    pruned = next((counted for method, counted in flops.items() if method != "unpruned"), None)
    prefill_ratio = unpruned["prefill"] / pruned["prefill"] if pruned is not None else None
    return {"budget": budget, "methods": methods, "prefill_ratio": prefill_ratio}


def thread_comparisons(
    runs: dict[str, dict[str, Any]], grouped: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """For a preset profiled with different CPU thread counts: the gap to the ideal and the per-call cost of small ops."""
    by_preset: dict[str, list[str]] = {}
    for label, run in runs.items():
        if "profile" in run and "gpu" not in run["machine"]:
            by_preset.setdefault(run["preset"], []).append(label)
    comparisons = []
    for preset, labels in by_preset.items():
        if len({runs[label]["machine"]["torch_threads"] for label in labels}) < 2:
            continue
        parts = []
        for label in sorted(labels, key=lambda label: runs[label]["machine"]["torch_threads"]):
            run, profile = runs[label], runs[label]["profile"]
            row = next(
                (r for r in grouped[label] if r["method"] == profile["method"] and r["budget"] == profile["budget"]),
                None,
            )
            small = [op for op in profile["runs"]["pruned"]["ops"].values() if op["category"] in SMALL_OP_CATEGORIES]
            small_ms, calls = sum(op["ms"] for op in small), sum(op["calls"] for op in small)
            parts.append(
                {
                    "threads": run["machine"]["torch_threads"],
                    "measured_over_ideal": row["measured_over_ideal"] if row else None,
                    "small_ms": small_ms,
                    "calls": calls,
                    "us_per_call": 1e3 * small_ms / max(calls, 1),
                    "load_average_start": run["machine"]["load_average_start"],
                }
            )
        comparisons.append({"preset": preset, "budget": runs[labels[0]]["profile"]["budget"], "runs": parts})
    return comparisons


def claims(grouped: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every published claim with `found`: this benchmark's figure at its operating point, one per run that has it."""
    result = []
    for claim in published_claims():
        measured = environment().from_string(claim["measured"])
        found = [
            f"{measured.render(row=row)} ({label})"
            for label, rows in grouped.items()
            for row in rows
            if row["preset"] == claim["preset"]
            and row["method"] == claim["method"]
            and not isinstance(row["budget"], str)  # an "auto" row has no fixed operating point
            and abs(row["budget"] - claim["budget"]) < 1e-9
        ]
        result.append(claim | {"found": found})
    return result
