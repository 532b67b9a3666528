"""The reproduction's run plan: who starts from what, with which schedule."""

import math

from experiments import reproduce
from realm_jax import configs

SHARED = ["base.steps=60", "sft.steps=100", "rl.steps=16"]


def _configs(methods):
  plan = reproduce.seed_plan(2, methods, "runs/r", SHARED)
  return plan, {wd: configs.load_experiment(exp, reproduce.applicable(exp, ov))
                for _, exp, wd, ov in plan}


def test_rl_runs_from_sft_do_not_repeat_the_distillation():
  plan, cfgs = _configs(list(reproduce.METHODS))
  sft_dir, base_dir = "runs/r/seed2/sft", "runs/r/seed2/base_model"
  workdirs = [wd for _, _, wd, _ in plan]
  assert workdirs.count(sft_dir) == 1 and workdirs[0] == base_dir
  assert cfgs[sft_dir].sft.steps == 100 and cfgs[sft_dir].init_from == base_dir
  for m in reproduce.FROM_SFT:
    cfg = cfgs[f"runs/r/seed2/{m}"]
    assert cfg.init_from == sft_dir and cfg.sft.steps == 0 and cfg.rl.steps == 16, m
    assert workdirs.index(sft_dir) < workdirs.index(f"runs/r/seed2/{m}")
  for m in ("rft", "grpo", "cot_synth", "realm_zero"):
    assert cfgs[f"runs/r/seed2/{m}"].init_from == base_dir, m
  assert all(c.seed == 2 for c in cfgs.values())
  reported = [m for m, *_ in plan if m is not None]
  assert sorted(reported) == sorted(["base_model", *reproduce.METHODS])


def test_sft_is_a_helper_run_when_not_reported():
  plan, _ = _configs(["realm_r1", "ablation_no_fading"])
  assert [(m, wd) for m, _, wd, _ in plan][:2] == [("base_model", "runs/r/seed2/base_model"),
                                                    (None, "runs/r/seed2/sft")]
  assert [m for m, *_ in plan[2:]] == ["realm_r1", "ablation_no_fading"]


def test_mean_ci_is_the_t_interval():
  m, h = reproduce.mean_ci([0.1, 0.2, 0.3])  # sd 0.1, t(0.975, 2) = 4.303
  assert math.isclose(m, 0.2) and math.isclose(h, 4.303 * 0.1 / math.sqrt(3))
  assert reproduce.mean_ci([0.5]) == (0.5, 0.0)
