"""The main job: ReaLM-R1 in miniature on the built-in tariff domain, in the realistic regime.

Teacher budget: the first 400 training questions carry teacher CoTs (the base
warm-up and guided distillation both draw from them); RL then trains on all
2,000 training questions with gold answers (and, under EAAI, their routes).
SFT validates on 128 held-out questions every 25 steps and keeps its best
checkpoint over all 400 steps (no plateau stop: its validation accuracy stays near
zero for a few hundred steps before it rises, and a stop after 4 validations without
a gain ended it at step 200 on one machine and not on another); RL validates every
10 steps and ends with its best. `realm-jax eval` then compares the SFT start
with the final policy on 512 other held-out questions, with and without
routes, next to the trivial baselines, and reports the paired difference
(McNemar p, 95% CI).

    make demo            # = realm-jax train demo --workdir runs/demo && realm-jax eval --workdir runs/demo
"""

import dataclasses

from experiments import common


def get_config():
  cfg = common.tiny("demo")
  cfg = dataclasses.replace(
      cfg, base=dataclasses.replace(cfg.base, steps=80),
      data=dataclasses.replace(cfg.data, num_eval=512, num_valid=128),
      eval=dataclasses.replace(cfg.eval, num_questions=512, k=1))
  cfg = common.with_sft(cfg, steps=400)
  cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, num_items=400, eval_every=25,
                                                         patience=0, select="best"))
  cfg = common.with_mrpv(common.with_rl(cfg, 60, eval_every=10, select="best"), contrast_coef=0.1)
  return cfg
