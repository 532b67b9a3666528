"""Baseline, CoT-synthesizer style: routes in every prompt, never faded, no verification reward.

    realm-jax train cot_synth --workdir runs/cot_synth init_from=runs/base_model
"""

from experiments import common


def get_config():
  cfg = common.with_rl(common.tiny("cot_synth"), common.RL_STEPS, routes="always")
  return common.with_mrpv(cfg, w_ver=0.0)
