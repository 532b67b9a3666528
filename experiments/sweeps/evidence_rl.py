"""What makes GRPO stable and effective from the evidence setting's SFT start.

Every run starts from `runs/evidence` (train it first: `realm-jax train evidence
--workdir runs/evidence`) with the same data, 150 RL steps of 16 prompts x 8
samples (19,200 rollouts), validation every 25 steps, best params kept; the
first run is `experiments/evidence_rl.py` as it is, each other changes one
thing (the third and fourth are ReaLM-R1). `realm-jax eval` of each run compares its final params with the start
on the same 512 test questions (paired).

    realm-jax sweep experiments/sweeps/evidence_rl.py --out runs/sweeps/evidence_rl

Results land in runs/sweeps/evidence_rl/results.{csv,md,png}; the committed
copy is experiments/results/evidence_rl/.
"""

from realm_jax.cli.sweep import Sweep


def get_sweep() -> Sweep:
  return Sweep(
      experiment="evidence_rl",
      runs=[
          {"rl.lr": 3e-5},
          {"rl.lr": 1e-4},
          # ReaLM-R1 from the same start with the same sample budget: MRPV routes on the EAAI
          # schedule (verification reward, route contrast)
          {"rl.lr": 3e-5, "rl.routes": "eaai", "rl.mrpv.contrast_coef": 0.1},
          {"rl.lr": 1e-4, "rl.routes": "eaai", "rl.mrpv.contrast_coef": 0.1},
          {"rl.lr": 1e-5},
          {"rl.lr": 3e-5, "rl.temperature": 0.7},
          {"rl.lr": 3e-5, "rl.advantage": "drgrpo"},
          {"rl.lr": 3e-5, "rl.loss.kl_coef": 0.0},
      ],
      metric="eval/paired/without routes/diff",
  )
