"""RL learning-rate sweep of the demo run, two seeds each (6 runs).

  make sweep SWEEP=experiments/sweeps/tiny_lr.py
  realm-jax sweep experiments/sweeps/tiny_lr.py --parallel 2 --out runs/sweeps/tiny_lr

Results land in runs/sweeps/tiny_lr/results.{csv,md,png}.
"""

from realm_jax.cli.sweep import Sweep


def get_sweep() -> Sweep:
  return Sweep(
      experiment="demo",
      grid={"rl.lr": [1e-4, 3e-4, 1e-3], "seed": [0, 1]},
  )
