"""The main job: ReaLM-R1 in miniature on the built-in tariff domain.

Tokenizer, base warm-up, guided CoT distillation, then RL with MRPV + EAAI;
`realm-jax eval` compares the SFT starting point with the final policy, with
and without routes.

    make demo            # = realm-jax train demo --workdir runs/demo && realm-jax eval --workdir runs/demo
"""

from experiments import common


def get_config():
  cfg = common.tiny("demo")
  cfg = common.with_sft(cfg)
  return common.with_mrpv(common.with_rl(cfg, common.RL_STEPS), contrast_coef=0.1)
