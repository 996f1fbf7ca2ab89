"""`hf-tokenprune bench` on tiny presets: row schema, budget rule, KV bytes, FLOPs model, extrapolation, bad input.

No timing is asserted: timings belong in the benchmark itself (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hf_tokenprune import testing
from hf_tokenprune.bench import BenchArguments, memory, presets, runner
from hf_tokenprune.bench.probes import extrapolate_full_depth
from hf_tokenprune.cli import main
from hf_tokenprune.cost import ideal_batch_prefill_ratio, ideal_prefill_ratio, prefill_flops
from hf_tokenprune.model import get_pruned_model
from hf_tokenprune.modeling.configuration_token_prune import TokenPruneConfig
from hf_tokenprune.modeling.token_selectors import learned_selectors, training_free_selectors

REPO = Path(__file__).resolve().parents[1]

REQUIRED_KEYS = {
    "preset",
    "method",
    "budget",
    "visual_tokens",
    "text_tokens",
    "kept_tokens",
    "vision_ms",
    "selection_ms",
    "prefill_ms",
    "ttft_ms",
    "ideal_prefill_ratio",
    "measured_prefill_ratio",
    "kv_cache_bytes",
    "extrapolated",
}
METHODS = ["visionselector", "autoselect", "reconstruction", "uniform"]
BUDGETS = [0.5, 0.3, 0.1]
TEXT_TOKENS = 12
# The tiny text config (hf_tokenprune.testing): hidden 32, FFN 64, 4 heads of 8, 2 KV heads; float32 = 4 bytes.
HIDDEN, FFN, HEAD_DIM, KV_HEADS, FLOAT32_BYTES = 32, 64, 32 // 4, 2, 4


def run_bench(tmp_path, *flags, preset="tiny-qwen2.5-vl", name="bench.json"):
    output = tmp_path / name
    common = ["--repeats", "1", "--warmup", "0", "--decode-tokens", "3", "--text-tokens", str(TEXT_TOKENS)]
    assert main(["bench", "--preset", preset, *common, "--dtype", "float32", "--output", str(output), *flags]) == 0
    return json.loads(output.read_text()), output


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bench")
    results, output = run_bench(
        tmp_path,
        "--methods",
        ",".join(METHODS),
        "--budgets",
        ",".join(map(str, BUDGETS)),
        "--layers",
        "2",
        "--vision-layers",
        "2",
        "--profile",
        "--profile-budget",
        "0.3,0.1",
        "--doc",
        str(tmp_path / "docs" / "benchmarks.md"),
    )
    return results, output, tmp_path


def kept_by_rule(budget: float, num_tokens: int) -> int:
    """The contract's budget rule, written out independently: max(1, round(b * N)), halves rounding up."""
    return max(1, math.floor(budget * num_tokens + 0.5))


def flops_by_hand(n: int, d: int, m: int, layers: int) -> int:
    attention_projections = 4 * n * d * d
    attention_scores = 2 * n * n * d
    feed_forward = 2 * n * d * m
    return (attention_projections + attention_scores + feed_forward) * layers


def test_rows_have_the_schema_and_order(qwen_run):
    results, _, _ = qwen_run
    rows = results["rows"]
    assert [(row["method"], row["budget"]) for row in rows] == [("unpruned", 1.0)] + [
        (method, budget) for method in METHODS for budget in BUDGETS
    ]
    for row in rows:
        assert REQUIRED_KEYS <= row.keys()
        assert row["preset"] == "tiny-qwen2.5-vl" and row["run"].startswith("tiny-qwen2.5-vl, ")
        assert row["ttft_ms"] > 0 and row["prefill_ms"] > 0 and row["vision_ms"] > 0
        assert row["decode_tokens_per_s"] > 0 and row["peak_memory_bytes"] > 0


def test_run_records_the_transformer_scorers_sizes_as_built(qwen_run):
    """Oracle: the encoders of the scorers built for the same preset; the report's machine line names them."""
    from hf_tokenprune.bench.presets import PRESETS

    results, _, tmp_path = qwen_run
    (run,) = results["runs"]
    config = PRESETS["tiny-qwen2.5-vl"].make_config(2, 2)
    base = PRESETS["tiny-qwen2.5-vl"].model_cls._from_config(config)
    expected = {}
    for method in ("autoselect", "reconstruction"):
        encoder = get_pruned_model(base, TokenPruneConfig(method=method)).token_selector.encoder
        expected[method] = {
            "scorer_hidden_size": encoder.input_proj.out_features,
            "scorer_num_layers": len(encoder.layers),
            "scorer_num_heads": encoder.layers[0].self_attn.num_heads,
        }
    assert run["selector_sizes"] == expected
    doc = (tmp_path / "docs" / "benchmarks.md").read_text()
    sizes = expected["autoselect"]
    assert f"autoselect's scorer: {sizes['scorer_hidden_size']} wide, {sizes['scorer_num_layers']} layers" in doc


def test_token_counts_follow_the_input_and_the_budget_rule(qwen_run):
    results, _, _ = qwen_run
    visual = 16 * 16 // 4  # the tiny preset's image: 16 x 16 patches, merged 2 x 2
    for row in results["rows"]:
        assert row["visual_tokens"] == visual
        assert row["text_tokens"] == TEXT_TOKENS
        assert row["kept_tokens"] == kept_by_rule(row["budget"], visual)


def test_kv_cache_bytes_equal_the_kept_token_formula(qwen_run):
    results, _, _ = qwen_run
    for row in results["rows"]:
        expected = 2 * row["layers"] * KV_HEADS * HEAD_DIM * (row["text_tokens"] + row["kept_tokens"]) * FLOAT32_BYTES
        assert row["kv_cache_bytes"] == expected
        assert row["kv_cache_bytes_predicted"] == expected
        assert row["kv_cache_bytes_full_depth"] == expected // row["layers"] * row["full_layers"]


def test_fastv_rows_count_the_layers_before_k_at_every_token(tmp_path):
    """fastv's layers 0..K-1 hold and compute every token: KV bytes (measured, predicted, full depth) and the ideal
    ratio against the hand formulas, and the prefill extrapolated from the pruned layers only."""
    results, _ = run_bench(tmp_path, "--methods", "fastv", "--budgets", "0.3", "--layers", "3", "--vision-layers", "2")
    unpruned, row = results["rows"]
    assert (unpruned["unpruned_layers"], row["unpruned_layers"]) == (0, 2)
    every, kept = row["text_tokens"] + row["visual_tokens"], row["text_tokens"] + row["kept_tokens"]
    assert row["kept_tokens"] == kept_by_rule(0.3, row["visual_tokens"])
    per_token = 2 * KV_HEADS * HEAD_DIM * FLOAT32_BYTES
    assert row["kv_cache_bytes"] == row["kv_cache_bytes_predicted"] == per_token * (2 * every + 1 * kept)
    assert (
        row["kv_cache_bytes_full_depth"]
        == row["kv_cache_bytes_predicted_full_depth"]
        == per_token * (2 * every + 2 * kept)
    )
    ideal = flops_by_hand(every, HIDDEN, FFN, 4) / (
        flops_by_hand(every, HIDDEN, FFN, 2) + flops_by_hand(kept, HIDDEN, FFN, 2)
    )
    assert row["ideal_prefill_ratio"] == pytest.approx(ideal, rel=1e-12)
    assert row["selection_ms"] > 0


def test_auto_budget_rows_keep_what_the_scores_choose(tmp_path):
    """An "auto" budget runs beside fixed ones: its row records the budget's string, keeps a count within the budget's
    fraction bounds (the rule itself is checked against an independent computation in the contract suite), and times
    the selection; the table prints it."""
    results, _ = run_bench(tmp_path, "--methods", "visionselector", "--budgets", "auto:0.5,0.3", "--layers", "2")
    unpruned, auto, fixed = results["rows"]
    assert (auto["budget"], fixed["budget"]) == ("auto:0.5", 0.3)  # AutoBudget's own string
    visual = auto["visual_tokens"]
    assert kept_by_rule(0.1, visual) <= auto["kept_tokens"] <= kept_by_rule(0.5, visual)
    assert auto["selection_ms"] > 0 and "| auto:0.5 |" in (tmp_path / "bench.md").read_text()


def test_prefill_flops_match_a_hand_computation():
    assert prefill_flops(10, 4, 8, 2) == (4 * 10 * 16 + 2 * 100 * 4 + 2 * 10 * 4 * 8) * 2 == 4160
    # Paper 001 Sec. 5.3's own example, LLaVA-NeXT: n = 2880, d = 4096, m = 11008, l = 32.
    assert prefill_flops(2880, 4096, 11008, 32) == 16_669_841_817_600


def test_ideal_ratio_is_the_flops_ratio_and_unpruned_ratios_are_one(qwen_run):
    results, _, _ = qwen_run
    unpruned, *pruned = results["rows"]
    assert unpruned["ideal_prefill_ratio"] == 1.0
    assert unpruned["measured_prefill_ratio"] == 1.0
    assert unpruned["measured_over_ideal"] == 1.0
    assert unpruned["selection_ms"] == 0.0
    for row in pruned:
        full = flops_by_hand(row["text_tokens"] + row["visual_tokens"], HIDDEN, FFN, row["full_layers"])
        kept = flops_by_hand(row["text_tokens"] + row["kept_tokens"], HIDDEN, FFN, row["full_layers"])
        assert row["ideal_prefill_ratio"] == pytest.approx(full / kept, rel=1e-12)
        assert row["measured_prefill_ratio"] == pytest.approx(unpruned["prefill_ms"] / row["prefill_ms"], rel=1e-9)
        assert row["selection_ms"] > 0


def test_reduced_depth_is_flagged_and_extrapolated_per_layer(qwen_run):
    results, _, _ = qwen_run
    for row in results["rows"]:
        assert row["extrapolated"] is True
        assert (row["layers"], row["full_layers"], row["vision_layers"], row["full_vision_layers"]) == (2, 4, 2, 4)
        measured = row["measured"]
        # One repeat: the full-depth prefill is the part outside the layers plus full depth x the mean layer time.
        expected = measured["prefill_outside_layers_ms"] + row["full_layers"] * measured["prefill_layer_ms"]
        assert row["prefill_ms"] == pytest.approx(expected, rel=1e-9)
        assert row["ttft_ms"] == pytest.approx(
            measured["ttft_ms"] - measured["prefill_ms"] - measured["vision_ms"] + row["prefill_ms"] + row["vision_ms"],
            rel=1e-9,
        )
        assert row["ttft_ms"] == pytest.approx(
            row["vision_ms"] + row["selection_ms"] + row["prefill_ms"] + row["other_ms"], rel=1e-9
        )


def test_full_depth_is_measured_not_extrapolated(tmp_path):
    results, _ = run_bench(
        tmp_path, "--methods", "uniform", "--budgets", "0.5", "--layers", "0", "--vision-layers", "0"
    )
    for row in results["rows"]:
        assert row["extrapolated"] is False and row["layers"] == row["full_layers"] == 4
        assert row["ttft_ms"] == pytest.approx(row["measured"]["ttft_ms"], rel=1e-9)
        assert row["prefill_ms"] == pytest.approx(row["measured"]["prefill_ms"], rel=1e-9)


def test_extrapolation_rule():
    # Outside the blocks: 10 - (2 + 2 + 3) = 3 ms; then 28 windowed blocks of 2 ms and 4 full ones of 3 ms.
    assert extrapolate_full_depth(10.0, {"window": [2.0, 2.0], "full": [3.0]}, {"window": 28, "full": 4}) == 71.0
    assert extrapolate_full_depth(10.0, {"window": [2.0, 2.0], "full": [3.0]}, {"window": 2, "full": 1}) == 10.0


def test_outputs_doc_and_report_mode(qwen_run):
    results, output, tmp_path = qwen_run
    table = output.with_suffix(".md").read_text()
    for method in ["unpruned", *METHODS]:
        assert f"| {method} |" in table
    assert output.with_suffix(".png").stat().st_size > 0
    doc_path = tmp_path / "docs" / "benchmarks.md"
    doc = doc_path.read_text()
    (plot,) = (tmp_path / "docs").glob("benchmarks-tiny-qwen2.5-vl*.png")
    assert plot.stat().st_size > 0 and f"({plot.name})" in doc
    assert results["runs"][0]["machine"]["cpu"] in doc
    assert "hf-tokenprune bench --preset tiny-qwen2.5-vl" in doc
    assert doc.count("### Where the prefill time goes") == 2  # one per profiled budget
    assert doc.count("The first MLP projection timed alone as one GEMM") == 2
    profile = results["runs"][0]["profile"]
    assert profile["runs"]["pruned"]["tokens"] < profile["runs"]["unpruned"]["tokens"]
    assert set(profile["flops"]) == {"unpruned", "visionselector", "autoselect", "reconstruction"}
    # Regenerating from the JSON alone gives the same report, plus the command that did it.
    regenerated = tmp_path / "again" / "benchmarks.md"
    assert main(["bench", "--report", str(output), "--doc", str(regenerated)]) == 0
    again = regenerated.read_text().splitlines()
    assert [line for line in again if "--report" not in line] == doc.splitlines()
    assert any(line.startswith("hf-tokenprune bench --report") for line in again)


@pytest.mark.parametrize(
    ("preset", "visual"),
    [
        ("tiny-qwen3-vl", 16 * 16 // 2**2),
        ("tiny-llava", (8 // 2) ** 2),
        ("tiny-llava-next", testing.llava_next_token_count(16, 16)),
        ("tiny-gemma3", testing.GEMMA3_TOKENS_PER_IMAGE),
        ("tiny-llava-onevision", testing.llava_onevision_token_count(16, 10)),
        ("tiny-internvl", 3 * 4),
        ("tiny-smolvlm", (2 * 2 + 1) * testing.SMOLVLM_VIEW_TOKENS),
    ],
)
def test_other_architectures(tmp_path, preset, visual):
    results, _ = run_bench(tmp_path, "--methods", "autoselect", "--budgets", "0.3", "--layers", "1", preset=preset)
    unpruned, pruned = results["rows"]
    for row in results["rows"]:
        assert row["visual_tokens"] == visual and row["extrapolated"] is True
        sequence = row["text_tokens"] + row["kept_tokens"]
        assert row["kv_cache_bytes"] == 2 * 1 * KV_HEADS * HEAD_DIM * sequence * FLOAT32_BYTES
    assert unpruned["kept_tokens"] == visual
    assert pruned["kept_tokens"] == kept_by_rule(0.3, visual)
    assert pruned["selection_ms"] > 0


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--preset", "qwen9-vl"], "--preset"),
        (["--budgets", "0"], "--budgets"),
        (["--budgets", "0.2,1.5"], "--budgets"),
        (["--budgets", "nan"], "--budgets"),
        (["--budgets", "half"], "--budgets"),
        (["--methods", "uniform,fastest"], "--methods"),
        (["--layers", "9"], "--layers"),
        (["--methods", "fastv", "--layers", "2"], "--layers"),  # fastv drops after layer 2: a third must be built
        (["--methods", "visionselector,divprune", "--budgets", "auto"], "--budgets"),  # divprune scores no tokens
        (["--budgets", "auto:2"], "--budgets"),
        (["--profile", "--profile-budget", "auto"], "--profile-budget"),
        (["--vision-layers", "1"], "--vision-layers"),  # Qwen2.5-VL: one windowed and one full-attention block
        (["--repeats", "0"], "--repeats"),
        (["--profile", "--profile-budget", "0.2,2"], "--profile-budget"),
        (["--report", "no-such-file.json"], "--report"),
        (["--fit-memory-mib", "-1"], "--fit-memory-mib"),
        (["--fit-max-batch", "0"], "--fit-max-batch"),
    ],
)
def test_bad_input_fails_before_any_compute(monkeypatch, tmp_path, flags, named):
    def no_compute(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(runner, "build_model", no_compute)
    arguments = ["bench", "--preset", "tiny-qwen2.5-vl", "--output", str(tmp_path / "b.json")]
    with pytest.raises(ValueError, match=named):
        main(arguments + flags)
    assert not (tmp_path / "b.json").exists()


def test_counted_prefill_flops_extrapolate_to_the_analytic_count(qwen_run):
    results, _, _ = qwen_run
    unpruned_row = results["rows"][0]
    counted = results["runs"][0]["profile"]["flops"]["unpruned"]["prefill"]
    n = unpruned_row["text_tokens"] + unpruned_row["visual_tokens"]
    # Per layer and token: Q and O 32 x 32, K and V 32 x 16 (2 KV heads of 8), gated FFN 3 x 32 x 64; attention
    # QK^T and AV over 4 heads of 8 (the counter charges the full n x n); 2 FLOPs per multiply-add; full depth 4.
    per_layer = 2 * (n * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64) + 2 * 4 * 8 * n * n)
    assert counted == pytest.approx(4 * per_layer, rel=1e-3)  # the rotary-table matmul is the only other FLOP


def test_runs_with_different_thread_counts_are_reported_side_by_side(tmp_path):
    flags = ["--methods", "uniform", "--budgets", "0.2", "--profile", "--profile-budget", "0.2"]
    outputs = []
    for threads in (1, 2):
        _, output = run_bench(tmp_path, *flags, "--threads", str(threads), name=f"threads{threads}.json")
        outputs.append(str(output))
    doc = tmp_path / "benchmarks.md"
    assert main(["bench", "--report", ",".join(outputs), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "## tiny-qwen2.5-vl, 1 CPU thread\n" in text and "## tiny-qwen2.5-vl, 2 CPU threads\n" in text
    assert "## Threads on a shared machine" in text


def test_default_methods_are_every_registered_selector_learned_first():
    methods = BenchArguments().methods.split(",")
    learned = len(learned_selectors())
    assert sorted(methods[:learned]) == learned_selectors()
    assert sorted(methods[learned:]) == training_free_selectors()


def test_committed_report_regenerates_byte_identical(monkeypatch, tmp_path):
    """docs/benchmarks.md is the report of the committed results: regenerating it from them changes no byte."""
    committed = (REPO / "docs" / "benchmarks.md").read_bytes()
    command = next(line for line in committed.decode().splitlines() if line.startswith("hf-tokenprune bench --report "))
    sources = command.split()[3]
    monkeypatch.chdir(REPO)  # the report names its sources as given: the repo-relative paths of the committed doc
    doc = tmp_path / "benchmarks.md"
    assert main(["bench", "--report", sources, "--doc", str(doc)]) == 0
    assert doc.read_bytes() == committed


# ------------------------------------------------------------------ issue 21: video, batch, decode, memory


@pytest.mark.parametrize(
    ("preset", "frames", "tokens_per_frame", "extra"),
    [
        ("tiny-qwen2.5-vl-video", 4, 8 * 8 // 4, 0),  # 8 frames = 4 temporal groups of 8 x 8 patches, merged 2 x 2
        ("tiny-llava-onevision-video", 4, 2 * 2, 1),  # 4 frames of 4 x 4 patches pooled 2 x 2, then one newline
    ],
)
def test_video_presets_prune_every_frame_by_the_budget(tmp_path, preset, frames, tokens_per_frame, extra):
    results, _ = run_bench(tmp_path, "--methods", "visionselector,divprune", "--budgets", "0.3", preset=preset)
    visual = frames * tokens_per_frame + extra
    for row in results["rows"]:
        assert row["visual_tokens"] == visual and row["batch_size"] == 1
        sequence = row["text_tokens"] + row["kept_tokens"]
        assert row["kv_cache_bytes"] == 2 * row["layers"] * KV_HEADS * HEAD_DIM * sequence * FLOAT32_BYTES
        assert row["decode_tokens_per_s"] > 0
    for row in results["rows"][1:]:
        # Contract line 2: frames are pruned like images (the newline is a unit of its own).
        assert row["kept_tokens"] == frames * kept_by_rule(0.3, tokens_per_frame) + extra
        assert row["ideal_prefill_ratio"] == pytest.approx(
            prefill_flops(row["text_tokens"] + visual, HIDDEN, FFN, 4)
            / prefill_flops(row["text_tokens"] + row["kept_tokens"], HIDDEN, FFN, 4)
        )
    assert results["runs"][0]["workload"] == "video"


def test_batch_preset_counts_images_per_second_and_per_sample_flops(tmp_path):
    results, _ = run_bench(tmp_path, "--methods", "visionselector", "--budgets", "0.3", preset="tiny-qwen2.5-vl-batch8")
    patches = [(4, 4), (8, 8), (8, 4), (4, 8), (4, 4), (8, 8), (4, 8), (8, 4)]  # the preset's images
    visual = [rows * cols // 4 for rows, cols in patches]
    unpruned, pruned = results["rows"]
    assert unpruned["batch_size"] == 8 and unpruned["visual_tokens"] == sum(visual)
    assert unpruned["text_tokens"] == 8 * TEXT_TOKENS  # padding is not text
    assert pruned["kept_tokens"] == sum(kept_by_rule(0.3, n) for n in visual)
    for row in results["rows"]:
        assert row["images_per_s"] == pytest.approx(8e3 / row["ttft_ms"])
        assert row["kv_cache_bytes"] == row["kv_cache_bytes_predicted"]  # B rows at the longest kept sample
    unpruned_flops = sum(prefill_flops(TEXT_TOKENS + n, HIDDEN, FFN, 4) for n in visual)
    pruned_flops = sum(prefill_flops(TEXT_TOKENS + kept_by_rule(0.3, n), HIDDEN, FFN, 4) for n in visual)
    assert pruned["ideal_prefill_ratio"] == pytest.approx(unpruned_flops / pruned_flops)


def test_selection_flops_are_counted_on_the_recorded_call(tmp_path):
    results, _ = run_bench(tmp_path, "--methods", "visionselector", "--budgets", "0.3", preset="tiny-qwen2.5-vl-video")
    row = results["rows"][1]
    # visionselector on 4 frames of 16 tokens, LLM width 32, d = 16: K projection of each frame's mean, the mean key
    # folded into W_q (d x width per frame), one width-long dot product per token; 2 FLOPs per multiply-add.
    tokens, frames, width, d = 64, 4, 32, 16
    assert row["selection_gflop"] * 1e9 == 2 * (frames * width * d + frames * d * width + tokens * width)
    assert row["selection_gflop_per_s"] == pytest.approx(row["selection_gflop"] * 1e3 / row["selection_ms"])


@pytest.mark.parametrize("lengths", [(10,), (10, 6)])
def test_selection_flops_count_the_transformer_scorers_attention(lengths):
    """Oracle: the FLOPs of autoselect's scorer written out layer by layer, attention included (torch's counter has
    no formula for the CPU flash kernel, so without `flop_counter`'s entry the N^2 terms went uncounted)."""
    from hf_tokenprune.bench.probes import selection_flops
    from hf_tokenprune.modeling.token_selectors import get_selector_class

    dim, width, heads = 24, 48, 4
    config = TokenPruneConfig(method="autoselect", scorer_hidden_size=width, scorer_num_heads=heads)
    selector = get_selector_class("autoselect")(config, dim, 32).eval()
    features = [torch.randn(n, dim) for n in lengths]
    # Padded to the longest segment: every row runs its projections and attends over the padded length.
    rows, padded = len(lengths), max(lengths)
    tokens = rows * padded
    linear = tokens * (dim * width + 2 * (width * 3 * width + width * width + 2 * width * 4 * width) + width)
    attention = 2 * rows * padded * padded * width  # QK^T and AV per layer, over all heads
    expected = 2 * linear + 2 * 2 * attention
    assert selection_flops(selector, ("select_segments", (features, [3] * rows), {})) == expected


def test_largest_batch_search_bisects_on_the_measured_peak(monkeypatch):
    measured = []

    def peak(config, inputs, new_tokens, device):
        batch = inputs["input_ids"].shape[0]
        measured.append(batch)
        return batch * 100

    monkeypatch.setattr(memory, "peak_above_start", peak)
    inputs = {"input_ids": torch.zeros(1, 5, dtype=torch.long)}
    assert memory.largest_batch(None, inputs, 350, 2, torch.device("cpu"), 32)["largest_batch"] == 3
    assert measured == [1, 2, 4, 3]
    capped = memory.largest_batch(None, inputs, 10**6, 2, torch.device("cpu"), 6)
    assert capped["largest_batch"] == 6 and capped["capped"]
    assert memory.largest_batch(None, inputs, 50, 2, torch.device("cpu"), 6)["largest_batch"] == 0


@pytest.mark.parametrize("preset", ["tiny-qwen2.5-vl-video", "tiny-llava-onevision-video", "tiny-internvl"])
def test_repeated_batch_generates_what_one_sample_does(preset):
    """`repeat_batch` lays out copies as the processor would: every row generates the single sample's tokens."""
    spec = presets.PRESETS[preset]
    model = runner.build_model(spec, 2, 2, torch.float32, torch.device("cpu"), "sdpa", 0)
    inputs = spec.make_inputs(model.config, TEXT_TOKENS, torch.Generator().manual_seed(0))
    single = model.generate(**inputs, max_new_tokens=3)
    batch = model.generate(**memory.repeat_batch(inputs, 3), max_new_tokens=3)
    assert torch.equal(batch, single.repeat(3, 1))


def test_what_fits_is_measured_and_reported(tmp_path):
    results, output = run_bench(
        tmp_path,
        "--methods",
        "visionselector",
        "--budgets",
        "0.3",
        "--fit-memory-mib",
        "4096",
        "--fit-max-batch",
        "2",
        "--tag",
        "fit",
        "--doc",
        str(tmp_path / "doc.md"),
    )
    fits = results["runs"][0]["what_fits"]
    assert [(row["method"], row["budget"]) for row in fits["rows"]] == [("unpruned", 1.0), ("visionselector", 0.3)]
    for row in fits["rows"]:
        assert row["largest_batch"] == 2 and row["capped"]  # 4 GiB holds two tiny samples
        assert [batch for batch, _ in row["probes"]] == [1, 2] and all(peak >= 0 for _, peak in row["probes"])
    assert results["rows"][0]["run"].endswith(", fit")
    doc = (tmp_path / "doc.md").read_text()
    assert "## What fits in a memory budget" in doc and "## Decode and KV cache" in doc
    assert "## Selection cost (budget 0.2)" not in doc  # no row at the acceptance budget


def test_ideal_batch_ratio_of_one_sample_is_the_single_ratio():
    config = presets.PRESETS["tiny-llava"].make_config(2, 2)
    assert ideal_batch_prefill_ratio([12], [16], [5], config) == pytest.approx(ideal_prefill_ratio(12, 16, 5, config))


def test_acceptance_compares_the_fastest_repeats_too():
    from hf_tokenprune.bench.report import acceptance

    def row(method, budget, prefill_min, ideal):
        return {
            "method": method,
            "budget": budget,
            "spread": {"prefill_ms": [prefill_min, 10 * prefill_min]},
            "ideal_prefill_ratio": ideal,
            "kv_cache_bytes": 10,
            "kv_cache_bytes_predicted": 10,
            "visual_tokens": 100,
            "text_tokens": 8,
        }

    rows = [row("unpruned", 1.0, 400.0, 1.0), row("a", 0.2, 100.0, 5.0), row("a", 0.5, 200.0, 2.0)]
    (section,) = acceptance({"run": rows}, 0.2)
    (chosen,) = section["rows"]
    assert chosen["fastest_over_ideal"] == pytest.approx(400.0 / 100.0 / 5.0)


def test_reproduce_command_names_the_device_and_attention(tmp_path):
    """A run's recorded command rebuilds it: `--device` and a non-default `--attn-implementation` are in it."""
    results, _ = run_bench(
        tmp_path, "--methods", "uniform", "--budgets", "0.5", "--device", "cpu", "--attn-implementation", "eager"
    )
    command = results["runs"][0]["command"]
    assert "--device cpu" in command and "--attn-implementation eager" in command
    assert results["runs"][0]["settings"]["attn_implementation"] == "eager"


def test_decode_runs_one_untimed_decode_first_when_warming_up(monkeypatch, tmp_path):
    """With --warmup, the decode phase makes one more decode call than it times (on the first configuration)."""
    from hf_tokenprune.bench import runner

    calls = []
    measure = runner.measure_decode

    def counting(config, *args, **kwargs):
        calls.append(config.method)
        return measure(config, *args, **kwargs)

    monkeypatch.setattr(runner, "measure_decode", counting)
    for warmup, expected in (("0", [None, "uniform"]), ("1", [None, None, "uniform"])):
        calls.clear()
        output = tmp_path / f"warm{warmup}.json"
        flags = ["--methods", "uniform", "--budgets", "0.5", "--repeats", "1", "--decode-tokens", "3"]
        assert main(["bench", "--preset", "tiny-qwen2.5-vl", *flags, "--warmup", warmup, "--output", str(output)]) == 0
        assert calls == expected
        assert json.loads(output.read_text())["runs"][0]["decode_warmup"] is (warmup == "1")


def test_cuda_runs_without_a_decode_warmup_leave_the_decode_table():
    """Decode speeds of a CUDA run timed cold are not compared; CPU runs and warmed CUDA runs are."""
    from hf_tokenprune.bench.report import decode_memory

    def rows(speed):
        return [
            {"method": method, "kv_cache_bytes_full_depth": 10, "decode_tokens_per_s": speed}
            for method in ("unpruned", "a")
        ]

    def run(device, warmed=None):
        record = {"machine": {"device": device}, "settings": {"decode_tokens": 4}}
        return record if warmed is None else record | {"decode_warmup": warmed}

    runs = {"cpu": run("cpu"), "cold": run("cuda"), "cold2": run("cuda", False), "warm": run("cuda", True)}
    sections = decode_memory({label: rows(2.0) for label in runs}, runs)
    assert [section["label"] for section in sections] == ["cpu", "warm"]


def test_gpu_prefill_view_reads_each_cuda_runs_per_layer_times():
    """The "On a GPU" table: per-layer prefill of unpruned and the pre-LLM methods' range at the budget (fastv, which
    runs its first layers on every token, left out), from CUDA runs only."""
    from hf_tokenprune.bench.report import gpu_prefill

    def row(method, budget, layer_ms, over_ideal, unpruned_layers=0):
        return {
            "method": method,
            "budget": budget,
            "text_tokens": 8,
            "visual_tokens": 100,
            "kept_tokens": 20,
            "unpruned_layers": unpruned_layers,
            "measured": {"prefill_layer_ms": layer_ms},
            "measured_over_ideal": over_ideal,
        }

    rows = [
        row("unpruned", 1.0, 3.0, 1.0),
        row("a", 0.2, 1.0, 0.5),
        row("b", 0.2, 1.5, 0.4),
        row("fastv", 0.2, 9.0, 0.1, unpruned_layers=2),
        row("a", 0.5, 2.0, 0.9),
    ]
    runs = {"gpu": {"machine": {"device": "cuda"}}, "cpu": {"machine": {"device": "cpu"}}}
    (view,) = gpu_prefill({"gpu": rows, "cpu": rows}, runs, 0.2)
    assert view["label"] == "gpu" and (view["tokens"], view["kept"]) == (108, 28)
    assert view["unpruned_layer_ms"] == 3.0 and view["pruned_layer_ms"] == (1.0, 1.5)
    assert view["measured_over_ideal"] == (0.4, 0.5)
