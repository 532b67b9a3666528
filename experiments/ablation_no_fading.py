"""Ablation of ReaLM-R1: routes in every RL prompt (EAAI off).

    realm-jax train ablation_no_fading --workdir runs/no_fading init_from=runs/base_model
"""

import dataclasses

from experiments import realm_r1


def get_config():
  cfg = realm_r1.get_config()
  return dataclasses.replace(cfg, name="ablation_no_fading",
                             rl=dataclasses.replace(cfg.rl, routes="always"))
