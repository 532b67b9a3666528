"""ReaLM-R1: guided CoT distillation, then RL with MRPV + EAAI (reference = SFT).

    realm-jax train realm_r1 --workdir runs/realm_r1 init_from=runs/base_model
"""

from experiments import common


def get_config():
  cfg = common.with_rl(common.with_sft(common.tiny("realm_r1")), common.RL_STEPS)
  return common.with_mrpv(cfg, contrast_coef=0.1)
