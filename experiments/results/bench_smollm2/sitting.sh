#!/bin/bash
# The SmolLM2-shape sitting of 2026-12-06 17:28-17:55 UTC (README, "Mixed-precision
# matmuls"): ours fp32, ours bf16 matmuls, the peers, then ours again in reverse order,
# one after the other. Run from the repository root; results in $OUT (default /tmp/b).
set -u
OUT="${OUT:-/tmp/b}"; mkdir -p "$OUT"
B=.venv/bin/realm-jax
$B bench --model smollm2 --out "$OUT/ours_fp32_1.json" > "$OUT/ours_fp32_1.txt" 2>&1
$B bench --model smollm2 --matmul-dtype bfloat16 --out "$OUT/ours_bf16_1.json" > "$OUT/ours_bf16_1.txt" 2>&1
OUT="$OUT/peers" ../shared/peers/run_all.sh --shape smollm2 --sample-runs 3 --grpo-steps 2 > "$OUT/peers.txt" 2>&1
$B bench --model smollm2 --matmul-dtype bfloat16 --out "$OUT/ours_bf16_2.json" > "$OUT/ours_bf16_2.txt" 2>&1
$B bench --model smollm2 --out "$OUT/ours_fp32_2.json" > "$OUT/ours_fp32_2.txt" 2>&1
