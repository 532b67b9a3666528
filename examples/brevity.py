"""A reward written outside realm_jax: prefer short completions that still answer.

Use it with a weight in the experiment's config:
  `rl=dataclasses.replace(cfg.rl, reward_weights={"examples/brevity.py:brevity": 0.2})`
Its column is logged as `reward/examples/brevity.py:brevity`.
"""

import numpy as np

LIMIT = 200  # characters


def brevity(prompts, completions, golds, **_):
  """1 - len / LIMIT (at least 0) for completions that contain an <answer> tag, else 0."""
  return np.array([max(0.0, 1.0 - len(c) / LIMIT) if "<answer>" in c else 0.0
                   for c in completions], np.float32)
