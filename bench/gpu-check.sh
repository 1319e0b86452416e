#!/usr/bin/env bash
# The model host on a GPU: drift, a patch comparison and a small eval on the Qwen2.5-0.5B-shaped benchmark
# checkpoint (bench/hf.ts generates it; nothing is downloaded) with its rank-16 LoRA adapter, through
# onnxruntime-node's CUDA provider. Prints tokens/s and GPU memory. Without an NVIDIA GPU it says so and exits 0.
# Run from the repository root after `npm ci`: bash bench/gpu-check.sh (finishes in well under 5 minutes on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi finds none); nothing to check"
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu-check: GPU /'
[ -f dist/cli.js ] && [ -f dist/bench/hf.js ] || npm run build >/dev/null
if ! ls node_modules/onnxruntime-node/bin/napi-v*/linux/x64/libonnxruntime_providers_cuda.so >/dev/null 2>&1; then
  echo "gpu-check: onnxruntime-node's CUDA provider is not installed; run: ONNXRUNTIME_NODE_INSTALL=cuda12 node node_modules/onnxruntime-node/script/install (needs CUDA 12 and cuDNN 9)" >&2
  exit 1
fi

paths=$(node dist/bench/hf.js --make-only)
BASE=$(node -e 'console.log(JSON.parse(process.argv[1]).base)' "$paths")
ADAPTER=$(node -e 'console.log(JSON.parse(process.argv[1]).adapter)' "$paths")
OUT=$(mktemp -d)
trap 'kill "$sampler" 2>/dev/null || true; rm -rf "$OUT"' EXIT

# GPU memory, sampled every 200 ms: the peak of each step is what it needed
( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1 >> "$OUT/mem"; sleep 0.2; done ) &
sampler=$!
peak() { sort -n "$OUT/mem" | tail -1; : > "$OUT/mem"; }
common=(--base "$BASE" --finetuned "$ADAPTER" --execution-provider cuda --cache-dir "$PWD/bench/out/hf/cache")

t0=$(date +%s.%N)
node dist/cli.js drift "${common[@]}" --json > "$OUT/drift.json"
t1=$(date +%s.%N)
echo "gpu-check: drift (load + two forwards): $(echo "$t1 - $t0" | bc) s, peak GPU memory $(peak) MiB"

node dist/cli.js patch "${common[@]}" --prompt 'I feel bored. What should I do?' --max-new-tokens 48 --json > "$OUT/patch.json"
t2=$(date +%s.%N)
tokens=$(node -e 'const j=require(process.argv[1]); console.log(j.generations ? 3 * 48 : 0)' "$OUT/patch.json")
echo "gpu-check: patch (3 answers x 48 tokens + scoring): $(echo "$t2 - $t1" | bc) s, about $(echo "scale=1; $tokens / ($t2 - $t1)" | bc) generated tokens/s, peak GPU memory $(peak) MiB"

head -5 examples/organisms/probes.jsonl > "$OUT/probes.jsonl"
node dist/cli.js eval "${common[@]}" --probes "$OUT/probes.jsonl" --max-new-tokens 32 --perturb-trials 2 --out "$OUT/run" > "$OUT/eval.md" || [ $? -eq 1 ]
t3=$(date +%s.%N)
echo "gpu-check: eval (5 probes, every condition, 32 new tokens): $(echo "$t3 - $t2" | bc) s, peak GPU memory $(peak) MiB"
grep -m1 'device\|Piggyback share' "$OUT/eval.md" || true
echo "gpu-check: done"
