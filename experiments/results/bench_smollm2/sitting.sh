#!/bin/bash
cd /work/main
B=.venv/bin/realm-jax
echo "start $(date -u +%H:%M:%S)"
$B bench --model smollm2 --out /tmp/b/ours_fp32_1.json > /tmp/b/ours_fp32_1.txt 2>&1; echo "fp32_1 done $(date -u +%H:%M:%S)"
$B bench --model smollm2 --matmul-dtype bfloat16 --out /tmp/b/ours_bf16_1.json > /tmp/b/ours_bf16_1.txt 2>&1; echo "bf16_1 done $(date -u +%H:%M:%S)"
OUT=/tmp/b/peers ../shared/peers/run_all.sh --shape smollm2 --sample-runs 3 --grpo-steps 2 > /tmp/b/peers.txt 2>&1; echo "peers done $(date -u +%H:%M:%S)"
$B bench --model smollm2 --matmul-dtype bfloat16 --out /tmp/b/ours_bf16_2.json > /tmp/b/ours_bf16_2.txt 2>&1; echo "bf16_2 done $(date -u +%H:%M:%S)"
$B bench --model smollm2 --out /tmp/b/ours_fp32_2.json > /tmp/b/ours_fp32_2.txt 2>&1; echo "fp32_2 done $(date -u +%H:%M:%S)"
