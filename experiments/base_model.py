"""The shared weak base: format warm-up only (stands in for a pretrained base SLM).

    realm-jax train base_model --workdir runs/base_model
"""

from experiments import common


def get_config():
  return common.tiny("base_model")
