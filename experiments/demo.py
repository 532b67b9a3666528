"""The main job: ReaLM-R1 in miniature on the built-in tariff domain.

Tokenizer, base warm-up, guided CoT distillation, then RL with MRPV + EAAI;
`realm-jax eval` compares the SFT starting point with the final policy, with
and without routes.

    make demo            # = realm-jax train demo --workdir runs/demo && realm-jax eval --workdir runs/demo
"""

import dataclasses

from experiments import common


def get_config():
  cfg = common.tiny("demo")
  cfg = dataclasses.replace(cfg, base=dataclasses.replace(cfg.base, steps=80),
                            data=dataclasses.replace(cfg.data, num_eval=64),
                            eval=dataclasses.replace(cfg.eval, num_questions=64))
  cfg = common.with_sft(cfg, steps=150)
  return common.with_mrpv(common.with_rl(cfg, 30), contrast_coef=0.1)
