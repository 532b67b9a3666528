"""ReaLM-Zero: RL with MRPV + EAAI straight from the base (reference = base).

    realm-jax train realm_zero --workdir runs/realm_zero init_from=runs/base_model
"""

from experiments import common


def get_config():
  cfg = common.with_rl(common.tiny("realm_zero"), common.RL_STEPS)
  return common.with_mrpv(cfg, contrast_coef=0.1)
