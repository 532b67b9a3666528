"""Policy losses for RL (PPO-clip / GRPO family, GSPO), KL terms and the route contrast.

Conventions
- Axis legend: B batch, T completion length, V vocab, P/Q positive/negative
  route slots.
- `logits_BTV[b, t]` predicts `targets_BT[b, t]`: the caller shifts tokens.
- `mask_BT` (bool or 0/1) marks the tokens that count. Masked positions are
  neutralised with `jnp.where` *before* any exp/log, so garbage there (even
  inf) neither changes the value nor produces a gradient.
- Log-softmax and every reduction run in float32.
- Each loss returns `(value, metrics)`; metrics are scalar arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from realm_jax.rl import mrpv

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Policy-gradient loss options.

  clip_low / clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high]
    (clip_high > clip_low is DAPO's clip-higher; 0.28 is DAPO's value).
  aggregation: how per-token terms become one scalar, see `aggregate`.
  max_len: the constant normaliser of `seq_mean_token_sum_norm` (Dr.GRPO), the
    maximum completion length of the run.
  kl_coef / kl_estimator: KL(policy || reference) penalty, per token with
    estimator k1, k2 or k3 (see `kl_estimates`). kl_coef = 0 disables it.
  kl_in_reward: apply the KL penalty to the reward (`kl_reward_penalty`)
    instead of adding it to the loss.
  entropy_coef: weight of an entropy bonus (subtracted from the loss).
  tis_cap: C of truncated importance sampling (`tis_weights`); None = off.
  """
  clip_low: float = 0.2
  clip_high: float = 0.2
  aggregation: str = "token_mean"
  max_len: int | None = None
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  kl_in_reward: bool = False
  entropy_coef: float = 0.0
  tis_cap: float | None = None

  def __post_init__(self):
    if not 0.0 <= self.clip_low < 1.0:
      raise ValueError(
          f"LossConfig.clip_low must be in [0, 1) (the ratio's lower bound is "
          f"1 - clip_low), got {self.clip_low}")
    if self.clip_high < 0.0:
      raise ValueError(
          f"LossConfig.clip_high must be >= 0, got {self.clip_high}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(
          f"LossConfig.aggregation={self.aggregation!r}; choose one of "
          f"{AGGREGATIONS}")
    if self.aggregation == "seq_mean_token_sum_norm":
      if not isinstance(self.max_len, int) or self.max_len <= 0:
        raise ValueError(
            "LossConfig.max_len must be a positive int (the maximum "
            "completion length) when aggregation='seq_mean_token_sum_norm', "
            f"got {self.max_len!r}")
    if self.kl_coef < 0.0:
      raise ValueError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef}")
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(
          f"LossConfig.kl_estimator={self.kl_estimator!r}; choose one of "
          f"{KL_ESTIMATORS}")
    if self.entropy_coef < 0.0:
      raise ValueError(
          f"LossConfig.entropy_coef must be >= 0, got {self.entropy_coef}")
    if self.tis_cap is not None and not self.tis_cap > 0.0:
      raise ValueError(
          f"LossConfig.tis_cap must be > 0 (or None: off), got {self.tis_cap}")


def _mask(mask_BT: jnp.ndarray) -> jnp.ndarray:
  return jnp.asarray(mask_BT).astype(bool)


def kl_estimates(logp_BT: jnp.ndarray,
                 ref_logp_BT: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Per-token estimators of KL(policy || reference), tokens drawn from policy.

  With d = logp - ref_logp (so r = ref/policy = exp(-d)):
      k1 = d                        unbiased, can be negative
      k2 = d^2 / 2                  biased, low variance, >= 0
      k3 = exp(-d) + d - 1          unbiased, >= 0   (= r - log r - 1)
  """
  d_BT = logp_BT.astype(jnp.float32) - ref_logp_BT.astype(jnp.float32)
  return {
      "k1": d_BT,
      "k2": 0.5 * jnp.square(d_BT),
      "k3": jnp.exp(-d_BT) + d_BT - 1.0,
  }


def aggregate(values_BT: jnp.ndarray,
              mask_BT: jnp.ndarray,
              mode: str,
              max_len: int | None = None) -> jnp.ndarray:
  """Reduce per-token values to a scalar, counting only masked-in tokens.

  With n_b = sum_t m_bt and S = {b : n_b > 0} (sequences with a counted token):
      token_mean:              sum_bt m_bt v_bt / sum_bt m_bt
      seq_mean_token_mean:     (1/|S|) sum_{b in S} (sum_t m_bt v_bt) / n_b
      seq_mean_token_sum_norm: (1/|S|) sum_{b in S} (sum_t m_bt v_bt) / max_len
  `token_mean` weighs every token alike (long completions weigh more);
  `seq_mean_token_mean` weighs every sequence alike (GRPO); the Dr.GRPO
  `seq_mean_token_sum_norm` divides by a constant so no length bias enters.
  Denominators are clipped at 1, so an all-masked batch gives 0.
  """
  m_BT = _mask(mask_BT)
  v_BT = jnp.where(m_BT, values_BT.astype(jnp.float32), 0.0)
  n_B = jnp.sum(m_BT, axis=-1).astype(jnp.float32)
  if mode == "token_mean":
    return jnp.sum(v_BT) / jnp.maximum(jnp.sum(n_B), 1.0)
  num_seqs = jnp.maximum(jnp.sum(n_B > 0).astype(jnp.float32), 1.0)
  if mode == "seq_mean_token_mean":
    return jnp.sum(jnp.sum(v_BT, axis=-1) / jnp.maximum(n_B, 1.0)) / num_seqs
  if mode == "seq_mean_token_sum_norm":
    if not isinstance(max_len, int) or max_len <= 0:
      raise ValueError(
          f"aggregate(mode='seq_mean_token_sum_norm') needs a positive int "
          f"max_len, got {max_len!r}")
    return jnp.sum(v_BT) / max_len / num_seqs
  raise ValueError(f"aggregation mode {mode!r}; choose one of {AGGREGATIONS}")


def kl_reward_penalty(logp_BT: jnp.ndarray, ref_logp_BT: jnp.ndarray,
                      mask_BT: jnp.ndarray, cfg: LossConfig) -> jnp.ndarray:
  """penalty_B = kl_coef * sum_t m_bt * k_bt, with k the configured estimator.

  For `kl_in_reward=True`: subtract it from the sequence reward before the
  group advantages (it is treated as a constant there, hence stop_gradient).
  """
  m_BT = _mask(mask_BT)
  k_BT = kl_estimates(jnp.where(m_BT, logp_BT, 0.0),
                      jnp.where(m_BT, ref_logp_BT, 0.0))[cfg.kl_estimator]
  return jax.lax.stop_gradient(
      cfg.kl_coef * jnp.sum(jnp.where(m_BT, k_BT, 0.0), axis=-1))


def _regularised(pg_BT, logp_BT, m_BT, cfg: LossConfig, ref_logp_BT, entropy_BT):
  """(per-token loss l = pg + kl_coef k - entropy_coef H, KL/entropy metrics); see `ppo_loss`."""
  uses_kl = cfg.kl_coef > 0.0 and not cfg.kl_in_reward
  if uses_kl and ref_logp_BT is None:
    raise ValueError(
        "policy loss: LossConfig.kl_coef > 0 with kl_in_reward=False needs "
        "ref_logp_BT (reference-model log-probs); pass it or set kl_coef=0")
  if cfg.entropy_coef > 0.0 and entropy_BT is None:
    raise ValueError(
        "policy loss: LossConfig.entropy_coef > 0 needs entropy_BT "
        "(train_losses.token_entropy of the policy logits)")
  per_token_BT, metrics = pg_BT, {}
  if ref_logp_BT is not None:
    kls = kl_estimates(jnp.where(m_BT, logp_BT, 0.0), jnp.where(m_BT, ref_logp_BT, 0.0))
    for name, k_BT in kls.items():
      metrics[f"kl_{name}"] = aggregate(k_BT, m_BT, "token_mean")
    if uses_kl:
      per_token_BT = per_token_BT + cfg.kl_coef * kls[cfg.kl_estimator]
  if entropy_BT is not None:
    metrics["entropy"] = aggregate(entropy_BT, m_BT, "token_mean")
    if cfg.entropy_coef > 0.0:
      per_token_BT = per_token_BT - cfg.entropy_coef * entropy_BT
  return per_token_BT, metrics


def _check_adv(adv_B, logp_BT):
  if adv_B.ndim != 1 or adv_B.shape[0] != logp_BT.shape[0]:
    raise ValueError(
        f"policy loss: adv_B must be [B]={logp_BT.shape[:1]}, got {adv_B.shape}")


def _clip_metrics(ratio, clipped, lo, hi, mean) -> dict[str, jnp.ndarray]:
  return {"clip_frac": mean(clipped.astype(jnp.float32)),
          "clip_frac_low": mean((clipped & (ratio < lo)).astype(jnp.float32)),
          "clip_frac_high": mean((clipped & (ratio > hi)).astype(jnp.float32)),
          "ratio_mean": mean(ratio)}


def ppo_loss(
    logp_BT: jnp.ndarray,
    old_logp_BT: jnp.ndarray,
    adv_B: jnp.ndarray,
    mask_BT: jnp.ndarray,
    cfg: LossConfig,
    ref_logp_BT: jnp.ndarray | None = None,
    entropy_BT: jnp.ndarray | None = None,
    weight_BT: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """PPO-clip policy loss with separate clip bounds, KL and entropy terms.

      rho_bt = exp(logp_bt - old_logp_bt)
      pg_bt  = w_bt max(-A_b rho_bt, -A_b clip(rho_bt, 1 - clip_low, 1 + clip_high))
      l_bt   = pg_bt + kl_coef * k_bt - entropy_coef * H_bt
      loss   = aggregate(l, mask, cfg.aggregation)
  where k is the configured KL estimator against `ref_logp_BT` (omitted when
  kl_in_reward or kl_coef = 0), H the token entropy (only when entropy_coef >
  0; pass `entropy_BT`) and w an optional constant per-token weight (the
  truncated importance weight of `tis_weights`; 1 when None).

  This is the signature of every policy loss (`LOSSES`, or a user function
  named by `rl.policy_loss`): arrays [B, T] over log-prob slots, adv [B];
  returns (loss, metrics) with `loss` among the metrics.

  Metrics (token means over the mask, whatever the aggregation): `loss`,
  `pg_loss`, `kl_k1`, `kl_k2`, `kl_k3` (all three logged whenever a reference
  is given), `clip_frac` (tokens whose clipped branch is active, i.e. that give
  no gradient), `clip_frac_low`, `clip_frac_high`, `ratio_mean`, `ratio_max`,
  `entropy` (when given).
  """
  _check_adv(adv_B, logp_BT)
  m_BT = _mask(mask_BT)
  logp_BT = logp_BT.astype(jnp.float32)
  log_ratio_BT = jnp.where(m_BT, logp_BT - old_logp_BT.astype(jnp.float32), 0.0)
  ratio_BT = jnp.exp(log_ratio_BT)
  adv_B1 = adv_B.astype(jnp.float32)[:, None]
  lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
  pg1_BT = -adv_B1 * ratio_BT
  pg2_BT = -adv_B1 * jnp.clip(ratio_BT, lo, hi)
  pg_BT = jnp.maximum(pg1_BT, pg2_BT)
  if weight_BT is not None:
    pg_BT = jax.lax.stop_gradient(weight_BT) * pg_BT
  per_token_BT, metrics = _regularised(pg_BT, logp_BT, m_BT, cfg, ref_logp_BT, entropy_BT)
  loss = aggregate(per_token_BT, m_BT, cfg.aggregation, cfg.max_len)
  metrics.update(_clip_metrics(ratio_BT, pg2_BT > pg1_BT, lo, hi,
                               lambda x: aggregate(x, m_BT, "token_mean")))
  metrics.update(loss=loss, pg_loss=aggregate(pg_BT, m_BT, cfg.aggregation, cfg.max_len),
                 ratio_max=jnp.max(jnp.where(m_BT, ratio_BT, 0.0)))
  return loss, metrics


def gspo_loss(
    logp_BT: jnp.ndarray,
    old_logp_BT: jnp.ndarray,
    adv_B: jnp.ndarray,
    mask_BT: jnp.ndarray,
    cfg: LossConfig,
    ref_logp_BT: jnp.ndarray | None = None,
    entropy_BT: jnp.ndarray | None = None,
    weight_BT: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """GSPO: the PPO clip on one sequence-level importance ratio per completion.

      s_b   = exp( (1/n_b) sum_t m_bt (logp_bt - old_logp_bt) )   (length-normalised)
      pg_b  = max(-A_b s_b, -A_b clip(s_b, 1 - clip_low, 1 + clip_high))
      l_bt  = w_bt pg_b + kl_coef * k_bt - entropy_coef * H_bt
      loss  = aggregate(l, mask, cfg.aggregation)
  so the whole sequence is clipped or not (with `seq_mean_token_mean` the
  loss is the mean of pg_b over sequences). Arguments and metrics as
  `ppo_loss`; clip and ratio metrics are over sequences with a counted token.
  """
  _check_adv(adv_B, logp_BT)
  m_BT = _mask(mask_BT)
  logp_BT = logp_BT.astype(jnp.float32)
  n_B = jnp.sum(m_BT, axis=-1).astype(jnp.float32)
  log_ratio_BT = jnp.where(m_BT, logp_BT - old_logp_BT.astype(jnp.float32), 0.0)
  ratio_B = jnp.exp(jnp.sum(log_ratio_BT, axis=-1) / jnp.maximum(n_B, 1.0))
  adv_B = adv_B.astype(jnp.float32)
  lo, hi = 1.0 - cfg.clip_low, 1.0 + cfg.clip_high
  pg1_B, pg2_B = -adv_B * ratio_B, -adv_B * jnp.clip(ratio_B, lo, hi)
  pg_BT = jnp.broadcast_to(jnp.maximum(pg1_B, pg2_B)[:, None], logp_BT.shape)
  if weight_BT is not None:
    pg_BT = jax.lax.stop_gradient(weight_BT) * pg_BT
  per_token_BT, metrics = _regularised(pg_BT, logp_BT, m_BT, cfg, ref_logp_BT, entropy_BT)
  loss = aggregate(per_token_BT, m_BT, cfg.aggregation, cfg.max_len)
  seqs_B = n_B > 0
  seq_mean = lambda x_B: jnp.sum(jnp.where(seqs_B, x_B, 0.0)) / jnp.maximum(jnp.sum(seqs_B), 1)
  metrics.update(_clip_metrics(ratio_B, pg2_B > pg1_B, lo, hi, seq_mean))
  metrics.update(loss=loss, pg_loss=aggregate(pg_BT, m_BT, cfg.aggregation, cfg.max_len),
                 ratio_max=jnp.max(jnp.where(seqs_B, ratio_B, 0.0)))
  return loss, metrics


# The built-in policy losses, by the name `rl.policy_loss` gives.
LOSSES = {"ppo": ppo_loss, "gspo": gspo_loss}


def tis_weights(old_logp_BT: jnp.ndarray, sampler_logp_BT: jnp.ndarray, mask_BT: jnp.ndarray,
                cap: float) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Truncated importance weights for the gap between the sampler and the trainer.

      w_bt = min(exp(old_logp_bt - sampler_logp_bt), C)     (0 outside the mask)
  with old_logp the trainer's log-probs under the rollout's params and
  sampler_logp those the sampler recorded for the same tokens; constant (no
  gradient). Metrics: `tis_weight_mean`, `tis_capped_frac` (token means).
  """
  m_BT = _mask(mask_BT)
  d_BT = jnp.where(m_BT, old_logp_BT.astype(jnp.float32) - sampler_logp_BT, 0.0)
  w_BT = jnp.where(m_BT, jnp.minimum(jnp.exp(d_BT), cap), 0.0)
  mean = lambda x: aggregate(x, m_BT, "token_mean")
  return jax.lax.stop_gradient(w_BT), {
      "tis_weight_mean": mean(w_BT),
      "tis_capped_frac": mean((jnp.exp(d_BT) > cap).astype(jnp.float32))}


def route_contrast_loss(margins_BPQ: jnp.ndarray,
                        pair_mask_BPQ: jnp.ndarray,
                        beta_c: float
                        ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """DPO-style term on (positive, negative) route pairs.

      loss = (1/|pairs|) sum_{valid (b,p,q)} -log sigmoid(beta_c * m_bpq)
  with margins from `mrpv.route_pair_margins`; 0 when there is no valid pair.
  Metrics: `loss` plus `mrpv.contrast_metrics` (margin_mean, pair_accuracy,
  num_pairs).
  """
  pm = jnp.asarray(pair_mask_BPQ).astype(bool)
  m = jnp.where(pm, margins_BPQ.astype(jnp.float32), 0.0)
  per_pair = -jax.nn.log_sigmoid(beta_c * m)
  n = jnp.sum(pm).astype(jnp.float32)
  loss = jnp.sum(jnp.where(pm, per_pair, 0.0)) / jnp.maximum(n, 1.0)
  metrics = {"loss": loss}
  metrics.update(mrpv.contrast_metrics(margins_BPQ, pair_mask_BPQ))
  return loss, metrics
