"""Baseline: SFT on teacher CoTs (guided distillation alone).

    realm-jax train sft --workdir runs/sft init_from=runs/base_model
"""

from experiments import common


def get_config():
  return common.with_sft(common.tiny("sft"))
