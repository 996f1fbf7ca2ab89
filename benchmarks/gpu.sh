#!/usr/bin/env bash
# The GPU rows of docs/benchmarks.md (issue 21) and the contract suites on CUDA, in one call of a lent GPU machine.
#
#   benchmarks/gpu.sh OUTPUT_DIR [SECONDS]
#
# 1. The contract suites (tests/test_contract.py, test_batched_selection.py, test_fastv.py) with the tiny models and
#    their inputs on CUDA (HF_TOKENPRUNE_TEST_DEVICE=cuda, hf_tokenprune.testing), float32 as written: the same oracles
#    as on CPU. Log: OUTPUT_DIR/contract-cuda.log.
# 2. `hf-tokenprune bench` on every preset at full depth (language model and vision tower), bfloat16, sdpa, CUDA events,
#    videos first: OUTPUT_DIR/<preset>.json (+ .md, .png). flash_attention_2 is not run: flash-attn ships no binary
#    wheel on PyPI and the GPU machine has no network to build one (torch's sdpa picks its own flash kernel on bf16).
#
# SECONDS (default: no limit) stops starting new presets when fewer than a preset's guess are left, so one lease of a
# machine brings back whatever finished. Every run is its own process: one preset's failure does not stop the others.
set -uo pipefail
out=${1:?usage: benchmarks/gpu.sh OUTPUT_DIR [SECONDS]}
limit=${2:-1000000}
python=${PYTHON:-python3}
mkdir -p "$out"
start=$SECONDS
left() { echo $((limit - (SECONDS - start))); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/machine.txt"
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/machine.txt"

HF_TOKENPRUNE_TEST_DEVICE=cuda timeout $(( $(left) < 150 ? $(left) : 150 )) "$python" -m pytest -n 8 -q \
    -p no:cacheprovider -rfE tests/test_contract.py tests/test_batched_selection.py tests/test_fastv.py \
    >"$out/contract-cuda.log" 2>&1
echo "contract suites on CUDA: exit $? ($(tail -1 "$out/contract-cuda.log"))"

common=(--device cuda --dtype bfloat16 --attn-implementation sdpa --layers 0 --vision-layers 0)
learned=visionselector,questionselector,autoselect,reconstruction
bench() {  # bench PRESET GUESS_SECONDS TAG ARGS...
    local preset=$1 guess=$2 tag=$3
    shift 3
    if (($(left) < guess)); then
        echo "skipped $preset: $(left) s left"
        return
    fi
    local began=$SECONDS
    timeout $(($(left) - 5)) "$python" -m hf_tokenprune.cli bench --preset "$preset" "${common[@]}" --tag "$tag" "$@" \
        >"$out/$preset-${tag//[^a-z0-9]/-}.log" 2>&1
    echo "$preset ($tag): exit $? in $((SECONDS - began)) s"
}
tag="cuda, bf16"
for preset in qwen2.5-vl-7b-video16 qwen2.5-vl-7b-video64 llava-onevision-7b-video; do
    bench "$preset" 60 "$tag" --methods $learned,divprune,fastv --budgets 0.2 --repeats 5 --warmup 2 \
        --decode-tokens 8 --output "$out/$preset.json"
done
for preset in qwen2.5-vl-7b llava-1.5-7b llava-next-7b internvl3-8b qwen3-vl-8b gemma3-12b llava-onevision-7b \
    smolvlm-instruct; do
    bench "$preset" 40 "$tag" --budgets 0.2,0.1 --repeats 3 --warmup 1 --decode-tokens 8 --output "$out/$preset.json"
done
bench qwen2.5-vl-7b-batch8 40 "$tag" --methods visionselector,divprune --budgets 0.2 --repeats 3 --warmup 1 \
    --decode-tokens 0 --output "$out/qwen2.5-vl-7b-batch8.json"
bench llava-1.5-7b 40 "$tag, what fits" --methods visionselector --budgets 0.2 --repeats 1 --warmup 0 \
    --decode-tokens 0 --fit-memory-mib 4096 --fit-max-batch 64 --output "$out/llava-1.5-7b-fit.json"
echo "done in $((SECONDS - start)) s"
