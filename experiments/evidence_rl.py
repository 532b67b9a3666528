"""RL from the evidence setting's SFT start (`experiments/evidence.py`), GRPO by default.

Same data as the start (so its held-out validation and test questions stay
unseen), no base or SFT stage: the run loads `runs/evidence`'s final params
and its tokenizer, and its reference model is that start. Plain GRPO is never
shown routes and is rewarded by the answer (plus 0.1 for the format). Larger
groups and batches than the demo's (16 prompts x 8 samples) and a slow,
warmed-up learning rate: at this scale the demo's 8 x 4 at 2e-4 made the
policy worse within ten steps (docs/method.md §7). RL validates every 25 steps
on the start's validation slice and ends with its best params.

    realm-jax train evidence --workdir runs/evidence
    realm-jax train evidence_rl --workdir runs/evidence_grpo
    realm-jax train evidence_rl --workdir runs/evidence_r1 rl.routes=eaai rl.mrpv.contrast_coef=0.1
    realm-jax sweep experiments/sweeps/evidence_rl.py     # the sweep behind the chosen setting
"""

import dataclasses

from experiments import common, evidence

START = "runs/evidence"


def get_config():
  cfg = evidence.get_config()
  cfg = dataclasses.replace(cfg, name="evidence_rl", init_from=START,
                            base=dataclasses.replace(cfg.base, steps=0),
                            sft=dataclasses.replace(cfg.sft, steps=0))
  return common.with_rl(cfg, 150, batch_prompts=16, group_size=8, lr=3e-5, warmup=20,
                        routes="never", eval_every=25, select="best")
