"""Ablation of ReaLM-R1: route-contrast term off (margins still logged).

    realm-jax train ablation_no_contrast --workdir runs/no_contrast init_from=runs/base_model
"""

import dataclasses

from experiments import common, realm_r1


def get_config():
  return dataclasses.replace(common.with_mrpv(realm_r1.get_config(), contrast_coef=0.0),
                             name="ablation_no_contrast")
