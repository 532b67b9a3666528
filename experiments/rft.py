"""Baseline: RFT, fine-tuning on the model's own correct samples (never on errors).

    realm-jax train rft --workdir runs/rft init_from=runs/base_model
"""

import dataclasses

from experiments import common
from realm_jax import configs


def get_config():
  cfg = common.tiny("rft")
  return dataclasses.replace(cfg, rft=configs.RFTConfig(
      rounds=2, questions=256, samples_per_question=16, temperature=1.0, steps_per_round=60,
      batch_size=32, lr=5e-4))
