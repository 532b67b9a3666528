"""The control SFT -> more SFT in the evidence setting (METHOD §6): from the same SFT start
as the RL runs (`runs/evidence`), as many more SFT updates on the same 2,000 teacher CoTs as
RL gets (150), validating every 25 steps and keeping the best, like the RL runs.

    realm-jax train evidence --workdir runs/evidence
    realm-jax train evidence_more_sft --workdir runs/evidence_more_sft && realm-jax eval --workdir runs/evidence_more_sft
"""

import dataclasses

from experiments import evidence, evidence_rl


def get_config():
  cfg = evidence.get_config()
  return dataclasses.replace(
      cfg, name="evidence_more_sft", init_from=evidence_rl.START,
      base=dataclasses.replace(cfg.base, steps=0),
      sft=dataclasses.replace(cfg.sft, steps=150, eval_every=25, patience=0, select="best"))
