"""Ablation of ReaLM-R1: verification reward weight 0.

    realm-jax train ablation_no_verification --workdir runs/no_ver init_from=runs/base_model
"""

import dataclasses

from experiments import common, realm_r1


def get_config():
  return dataclasses.replace(common.with_mrpv(realm_r1.get_config(), w_ver=0.0),
                             name="ablation_no_verification")
