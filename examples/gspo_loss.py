"""A policy loss written outside realm_jax: GSPO's sequence-level importance ratio.

Use: `rl.policy_loss="examples/gspo_loss.py:gspo_loss"` (realm_jax ships the same
loss as `rl.policy_loss=gspo`; this file shows what a user writes).
"""

import jax.numpy as jnp

from realm_jax.rl import losses


def gspo_loss(logp_BT, old_logp_BT, adv_B, mask_BT, cfg, ref_logp_BT=None, entropy_BT=None,
              weight_BT=None):
  """s_b = exp(mean_t (logp - old_logp)); pg_b = max(-A s, -A clip(s)); per-sequence clip."""
  m_BT = mask_BT > 0
  n_B = jnp.maximum(m_BT.sum(-1), 1)
  s_B = jnp.exp(jnp.where(m_BT, logp_BT - old_logp_BT, 0.0).sum(-1) / n_B)
  clipped_B = jnp.clip(s_B, 1 - cfg.clip_low, 1 + cfg.clip_high)
  pg_B = jnp.maximum(-adv_B * s_B, -adv_B * clipped_B)
  per_token_BT = jnp.broadcast_to(pg_B[:, None], logp_BT.shape)
  if weight_BT is not None:  # truncated importance weights (rl.loss.tis_cap)
    per_token_BT = weight_BT * per_token_BT
  if ref_logp_BT is not None and cfg.kl_coef and not cfg.kl_in_reward:
    per_token_BT = per_token_BT + cfg.kl_coef * losses.kl_estimates(
        logp_BT, ref_logp_BT)[cfg.kl_estimator]
  loss = losses.aggregate(per_token_BT, m_BT, cfg.aggregation, cfg.max_len)
  return loss, {"loss": loss, "ratio_mean": jnp.mean(s_B), "ratio_max": jnp.max(s_B)}
