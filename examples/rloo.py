"""An advantage estimator written outside realm_jax: RLOO (leave-one-out baseline).

Use: `rl.advantage="examples/rloo.py:rloo"` (realm_jax ships it as `rl.advantage=rloo`).
"""

import jax.numpy as jnp


def rloo(rewards_N, group_size):
  """A_bg = r_bg - mean of the other G - 1 rewards of prompt b (rows are prompt-major)."""
  r_BG = jnp.asarray(rewards_N, jnp.float32).reshape(-1, group_size)
  baseline_BG = (r_BG.sum(1, keepdims=True) - r_BG) / (group_size - 1)
  return (r_BG - baseline_BG).reshape(-1)
