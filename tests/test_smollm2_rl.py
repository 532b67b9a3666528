"""ReaLM-R1 on the real SmolLM2-135M-Instruct with gsm_symbolic: the config and a CPU smoke run.

The smoke run is the experiment's own code path (GGUF import, chat prompts,
guided-distillation SFT, RL with MRPV + EAAI and route contrast, evaluation)
shrunk to one SFT and two RL steps of 2 prompts x 2 samples. Prompts are cut
to their last 128 tokens (`prompt_buckets`, counted in `prompts_too_long`)
and SFT/route sequences to 192 so that the 135M model runs on two CPU cores.
"""

import math
import os

import numpy as np
import pytest

from realm_jax import configs, corpus, evaluate, gguf_import, metrics, pretrained, train

EXPERIMENT = "realm_r1_smollm2"
SMOKE = [
    "mesh=1,1,1", "model.remat=false", "data.num_train=16", "data.num_eval=2",
    "data.prompt_buckets=128", "data.sft_buckets=192",
    "sft.steps=1", "sft.batch_size=2", "sft.warmup=1", "sft.route_share=0",
    "rl.steps=2", "rl.num_minibatches=1", "rl.batch_prompts=2", "rl.group_size=2",
    "rl.max_new_tokens=16", "rl.warmup=1",
    "eval.num_questions=2", "eval.k=1", "eval.max_new_tokens=16", "eval.batch_size=2",
]


def test_config_is_realm_r1_on_smollm2_and_gsm_symbolic():
  cfg = configs.load_experiment(EXPERIMENT)
  assert cfg.model.pretrained == "smollm2" and cfg.data.source == "gym:gsm_symbolic"
  assert cfg.sft.steps > 0 and cfg.rl.steps > 0 and cfg.rl.routes == "eaai"
  assert cfg.rl.mrpv.num_routes == 2 and cfg.rl.mrpv.contrast_coef > 0 and cfg.rl.mrpv.w_ver > 0
  assert 1e-6 <= cfg.rl.lr <= 5e-6 and cfg.rl.loss.kl_coef == pytest.approx(0.04)
  assert cfg.rl.max_new_tokens == 256 and cfg.rl.group_size == 8
  # The long default instructions, not the tiny experiments' short templates.
  assert "<verify>" in cfg.rl.mrpv.with_routes_template
  assert cfg.rl.mrpv.with_routes_template == type(cfg.rl.mrpv)().with_routes_template


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("smollm2_r1"))
  train.run(EXPERIMENT, wd, SMOKE)
  return wd


def test_smoke_run(smoke_run):
  wd = smoke_run
  assert os.path.exists(os.path.join(wd, "DONE"))
  for phase in ("sft", "rl"):
    assert os.path.isdir(train.params_path(wd, phase)), phase
  sft_rows = [r for r in metrics.read_metrics(wd, "sft") if "loss" in r]
  assert [r["step"] for r in sft_rows] == [0]
  assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in sft_rows)
  rl_rows = metrics.read_metrics(wd, "rl")
  assert [r["step"] for r in rl_rows] == [0, 1]
  for r in rl_rows:
    for key in ("loss", "grad_norm", "reward", "reward/answer", "reward/verification",
                "reward/format", "kl_k3", "entropy", "completion_len_mean"):
      assert key in r and math.isfinite(r[key]), (key, r)
    assert 0 < r["completion_len_mean"] <= 16
  assert rl_rows[0]["p_routes"] == 1  # EAAI starts with routes on every prompt
  results = evaluate.run(wd)
  assert len(results) == 2  # start (sft) and final (rl)
  for settings in results.values():
    for r in settings.values():
      assert r["n"] == 2 and 0 <= r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"] <= 1
