"""Baseline: plain GRPO, never shown routes (answer + format reward only).

    realm-jax train grpo --workdir runs/grpo init_from=runs/base_model
"""

from experiments import common


def get_config():
  return common.with_rl(common.tiny("grpo"), common.RL_STEPS, routes="never")
