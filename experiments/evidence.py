"""The evidence setting's SFT start (issue "training that measurably works", METHOD §6).

The realistic regime ReaLM addresses, on the tiny model and tariff level 0:
- a fixed teacher budget of `TEACHER_COTS` worked solutions (the base warm-up
  and guided distillation both draw from them, nothing else sees a CoT);
- `RL_QUESTIONS` training questions in all, with gold answers only, for RL
  (their MRPV routes come from the same rule-based teacher and are counted
  by the methods that show them);
- SFT validates on 256 held-out questions every 50 steps, keeps its best
  checkpoint and stops after 4 validations without a gain: trained to its
  plateau, not to a step count.

Every RL method of the comparison starts from this run's final params
(`init_from=runs/evidence`), so they share one start:

    realm-jax train evidence --workdir runs/evidence
    realm-jax sweep experiments/sweeps/evidence_rl.py --out runs/sweeps/evidence_rl
"""

import dataclasses

from experiments import common

TEACHER_COTS = 2000
RL_QUESTIONS = 10000


def get_config():
  cfg = common.tiny("evidence")
  cfg = dataclasses.replace(
      cfg, base=dataclasses.replace(cfg.base, steps=80),
      data=dataclasses.replace(cfg.data, num_train=RL_QUESTIONS, num_eval=512, num_valid=256),
      eval=dataclasses.replace(cfg.eval, num_questions=512, k=1))
  cfg = common.with_sft(cfg, steps=3000)
  return dataclasses.replace(cfg, sft=dataclasses.replace(
      cfg.sft, num_items=TEACHER_COTS, eval_every=50, patience=4, select="best"))
