"""Ablation of ReaLM-R1: routes are positives only (no learning from wrong processes).

    realm-jax train ablation_no_negatives --workdir runs/no_neg init_from=runs/base_model
"""

import dataclasses

from experiments import realm_r1


def get_config():
  cfg = realm_r1.get_config()
  return dataclasses.replace(cfg, name="ablation_no_negatives",
                             rl=dataclasses.replace(cfg.rl, negatives=False))
