#!/usr/bin/env bash
# Regenerates docs/benchmarks.md: one `hf-tokenprune bench` run per preset (JSON, markdown table and plot in
# benchmarks/results/), then the report merged from those JSON files. CPU timings with one torch thread: on a
# shared 2-core machine, two threads stall on every small op whenever another process takes a core (the
# two-thread Qwen2.5-VL run shows it; docs/benchmarks.md explains it from its profile).
set -euo pipefail
cd "$(dirname "$0")/.."
results=benchmarks/results
common=(--repeats 3 --warmup 1 --decode-tokens 4)

hf-tokenprune bench --preset qwen2.5-vl-7b --threads 1 "${common[@]}" \
    --output "$results/qwen2.5-vl-7b-1thread.json" --profile --profile-budget 0.2,0.3
hf-tokenprune bench --preset qwen2.5-vl-7b --threads 2 "${common[@]}" \
    --output "$results/qwen2.5-vl-7b-2threads.json" --profile
# 0.1111 keeps 64 of LLaVA-1.5's 576 tokens (AutoSelect's operating point) and 325 of LLaVA-NeXT's 2,928.
hf-tokenprune bench --preset llava-1.5-7b --threads 1 --budgets 0.5,0.2,0.1111 "${common[@]}" \
    --output "$results/llava-1.5-7b.json" --profile --profile-method autoselect --profile-budget 0.1111
hf-tokenprune bench --preset llava-next-7b --threads 1 --methods visionselector,autoselect,reconstruction,divprune \
    --budgets 0.5,0.2,0.1111 "${common[@]}" --output "$results/llava-next-7b.json"
hf-tokenprune bench --preset internvl3-8b --threads 1 --methods visionselector,autoselect,reconstruction,divprune \
    --budgets 0.5,0.2 "${common[@]}" --output "$results/internvl3-8b.json"
# The newer architectures (issue 19): one learned and one training-free method at the acceptance budget, prefill
# only, float32: on this 2-core machine a bf16 run with 4 decode tokens took about 3 min per timed run of Qwen3-VL-8B
# (two layers), a float32 prefill about 25 s.
for preset in qwen3-vl-8b gemma3-12b llava-onevision-7b smolvlm-instruct; do
    hf-tokenprune bench --preset "$preset" --threads 1 --methods visionselector,divprune --budgets 0.2 --repeats 2 --warmup 1 \
        --decode-tokens 0 --dtype float32 --output "$results/$preset.json"
done

# Issue 21, on an AVX2-only host (no native bf16 GEMM: bf16 runs 8x slower than float32 there), so float32 and one
# built language-model layer (every layer costs the same; the rows are extrapolated): videos, the learned selectors'
# cost on every image preset with decode speed and KV bytes, an 8-image batch, and the measured what-fits search.
# The runs above are kept as they were recorded (bfloat16, on the host named in docs/benchmarks.md), not re-run.
issue21=(--threads 1 --dtype float32 --layers 1)
learned=visionselector,questionselector,autoselect,reconstruction
# The videos with more built layers and repeats than the image rows (2026-11-26, nothing else running): with one
# built layer the run-to-run spread of a layer's time (up to 18% on this host, the same tensors timed in a loop)
# was multiplied x 28 into every row.
# (video16 was recorded before questionselector joined the learned set here.)
hf-tokenprune bench --preset qwen2.5-vl-7b-video16 --threads 1 --dtype float32 --layers 3 --tag float32 \
    --methods visionselector,autoselect,reconstruction,divprune --budgets 0.2 --repeats 3 --warmup 1 --decode-tokens 4 \
    --output "$results/qwen2.5-vl-7b-video16.json"
# questionselector's selection share on video16, with visionselector beside it (2026-11-26, quiet: the training job
# that shared the machine was stopped for the run).
hf-tokenprune bench --preset qwen2.5-vl-7b-video16 --threads 1 --dtype float32 --layers 1 --tag "float32, questionselector" \
    --methods questionselector,visionselector --budgets 0.2 --repeats 1 --warmup 1 --decode-tokens 0 \
    --output "$results/qwen2.5-vl-7b-video16-questionselector.json"
hf-tokenprune bench --preset llava-onevision-7b-video --threads 1 --dtype float32 --layers 3 --tag float32 \
    --methods $learned,divprune --budgets 0.2 --repeats 3 --warmup 1 --decode-tokens 4 \
    --output "$results/llava-onevision-7b-video.json"
hf-tokenprune bench --preset qwen2.5-vl-7b-video64 --threads 1 --dtype float32 --layers 2 --tag float32 \
    --methods $learned,divprune --budgets 0.2 --repeats 2 --warmup 1 --decode-tokens 0 \
    --output "$results/qwen2.5-vl-7b-video64.json"
# The three video presets again, with every learned method, on the host of a later session (an Intel Xeon, 2 cores,
# 2026-11-26 17:00-18:00 UTC, nothing else running; the rows above are an AMD EPYC host's).
xeon="float32, Xeon host"
hf-tokenprune bench --preset qwen2.5-vl-7b-video16 --threads 1 --dtype float32 --layers 3 --tag "$xeon" \
    --methods $learned,divprune --budgets 0.2 --repeats 3 --warmup 1 --decode-tokens 4 \
    --output "$results/qwen2.5-vl-7b-video16-xeon.json"
hf-tokenprune bench --preset llava-onevision-7b-video --threads 1 --dtype float32 --layers 3 --tag "$xeon" \
    --methods $learned,divprune --budgets 0.2 --repeats 3 --warmup 1 --decode-tokens 4 \
    --output "$results/llava-onevision-7b-video-xeon.json"
hf-tokenprune bench --preset qwen2.5-vl-7b-video64 --threads 1 --dtype float32 --layers 2 --tag "$xeon" \
    --methods $learned,divprune --budgets 0.2 --repeats 2 --warmup 1 --decode-tokens 0 \
    --output "$results/qwen2.5-vl-7b-video64-xeon.json"
# OneVision video once more on the Xeon host with 5 repeats (2026-11-26 22:30 UTC, nothing else running): the
# 3-repeat run above put the same 625-token prefill at 0.94-1.00 of the ideal across methods, i.e. within its noise.
hf-tokenprune bench --preset llava-onevision-7b-video --threads 1 --dtype float32 --layers 3 --tag "$xeon, 5 repeats" \
    --methods $learned,divprune --budgets 0.2 --repeats 5 --warmup 1 --decode-tokens 4 \
    --output "$results/llava-onevision-7b-video-xeon-5repeats.json"
# The four bfloat16 image presets, every learned method (tag, output suffix).
bf16_images() {
    for preset in llava-next-7b llava-1.5-7b qwen2.5-vl-7b internvl3-8b; do
        hf-tokenprune bench --preset "$preset" --threads 1 --dtype bfloat16 --layers 2 --vision-layers 2 \
            --tag "$1" --methods $learned --budgets 0.2 --repeats 3 --warmup 1 --decode-tokens 0 \
            --output "$results/$preset-$2.json"
    done
}
# The eight image presets in float32, every learned method (tag, output suffix).
float32_images() {
    for preset in qwen2.5-vl-7b llava-1.5-7b llava-next-7b internvl3-8b qwen3-vl-8b gemma3-12b llava-onevision-7b \
        smolvlm-instruct; do
        hf-tokenprune bench --preset "$preset" "${issue21[@]}" --tag "$1" --methods $learned --budgets 0.2 --repeats 1 \
            --warmup 1 --decode-tokens 3 --output "$results/$preset-$2.json"
    done
}
# The bfloat16 image presets again with today's scorers (the untagged rows above are from 2026-11-21, before the
# scorers' attention went through sdpa), on the Xeon host, which has AMX bfloat16 matrix units.
bf16_images "bfloat16, Xeon host" bf16-xeon
float32_images float32 float32
hf-tokenprune bench --preset qwen2.5-vl-7b-batch8 "${issue21[@]}" --tag float32 --methods visionselector,divprune \
    --budgets 0.2 --repeats 1 --warmup 1 --decode-tokens 0 --output "$results/qwen2.5-vl-7b-batch8.json"
hf-tokenprune bench --preset llava-1.5-7b "${issue21[@]}" --tag "float32, what fits" --methods visionselector \
    --budgets 0.2 --repeats 1 --warmup 0 --decode-tokens 0 --fit-memory-mib 1024 --fit-max-batch 32 \
    --output "$results/llava-1.5-7b-fit.json"

# Issue 20: fastv (prunes inside the language model after layer 2: a built depth of 4 times two pruned layers) on a
# quiet machine, and every scoring method at a fixed and an "auto" budget (selection cost), float32, one thread.
hf-tokenprune bench --preset qwen2.5-vl-7b --threads 1 --dtype float32 --layers 4 --vision-layers 2 --tag "float32, fastv" \
    --methods fastv,divprune --budgets 0.2,0.1 --repeats 3 --warmup 1 --decode-tokens 0 \
    --output "$results/qwen2.5-vl-7b-fastv.json"
hf-tokenprune bench --preset qwen2.5-vl-7b --threads 1 --dtype float32 --layers 3 --vision-layers 2 \
    --tag "float32, issue 20" --methods visionselector,questionselector,autoselect,reconstruction,fastv --budgets 0.2,auto \
    --repeats 2 --warmup 1 --decode-tokens 0 --output "$results/qwen2.5-vl-7b-issue20.json"

# The Transformer scorers' default heads became 128 wide (autoselect 2 heads, reconstruction 1; they had 4 in every
# row above): the bfloat16 and float32 image presets again on the Xeon host (2026-11-27, nothing else running).
bf16_images "bfloat16, Xeon host, 128-wide heads" bf16-xeon-heads128
float32_images "float32, Xeon host, 128-wide heads" float32-heads128

issue21_results=""
for name in qwen2.5-vl-7b-video16 qwen2.5-vl-7b-video16-questionselector qwen2.5-vl-7b-video64 llava-onevision-7b-video \
    qwen2.5-vl-7b-video16-xeon llava-onevision-7b-video-xeon qwen2.5-vl-7b-video64-xeon \
    llava-onevision-7b-video-xeon-5repeats llava-next-7b-bf16-xeon llava-1.5-7b-bf16-xeon qwen2.5-vl-7b-bf16-xeon \
    internvl3-8b-bf16-xeon qwen2.5-vl-7b-float32 \
    llava-1.5-7b-float32 llava-next-7b-float32 internvl3-8b-float32 qwen3-vl-8b-float32 gemma3-12b-float32 \
    llava-onevision-7b-float32 smolvlm-instruct-float32 qwen2.5-vl-7b-batch8 llava-1.5-7b-fit qwen2.5-vl-7b-fastv \
    qwen2.5-vl-7b-issue20 llava-next-7b-bf16-xeon-heads128 llava-1.5-7b-bf16-xeon-heads128 \
    qwen2.5-vl-7b-bf16-xeon-heads128 internvl3-8b-bf16-xeon-heads128 qwen2.5-vl-7b-float32-heads128 \
    llava-1.5-7b-float32-heads128 llava-next-7b-float32-heads128 internvl3-8b-float32-heads128 \
    qwen3-vl-8b-float32-heads128 gemma3-12b-float32-heads128 llava-onevision-7b-float32-heads128 \
    smolvlm-instruct-float32-heads128; do
    issue21_results+=",$results/$name.json"
done

# The GPU rows (issue 21): `benchmarks/gpu.sh benchmarks/results/cuda` on a GPU machine (2026-11-26: one H100, torch
# 2.11 + CUDA 13.0, every preset at full depth in bfloat16 with sdpa). Not run here: this script runs on CPU.
cuda_results=""
for name in qwen2.5-vl-7b-video16 qwen2.5-vl-7b-video64 llava-onevision-7b-video qwen2.5-vl-7b llava-1.5-7b llava-next-7b \
    internvl3-8b qwen3-vl-8b gemma3-12b llava-onevision-7b smolvlm-instruct qwen2.5-vl-7b-batch8 llava-1.5-7b-fit; do
    cuda_results+=",$results/cuda/$name.json"
done

hf-tokenprune bench --doc docs/benchmarks.md --report "$results/qwen2.5-vl-7b-1thread.json,\
$results/llava-1.5-7b.json,$results/llava-next-7b.json,$results/internvl3-8b.json,\
$results/qwen3-vl-8b.json,$results/gemma3-12b.json,$results/llava-onevision-7b.json,$results/smolvlm-instruct.json\
$issue21_results$cuda_results"
