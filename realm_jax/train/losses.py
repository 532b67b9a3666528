"""Likelihood math every stage shares: token log-probs, entropy, SFT and KD losses.

Conventions as in `realm_jax.rl.losses`: `logits_BTV[b, t]` predicts
`targets_BT[b, t]`; masked positions are neutralised before any exp/log;
log-softmax and reductions run in float32; losses return `(value, metrics)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _mask(mask_BT: jnp.ndarray) -> jnp.ndarray:
  return jnp.asarray(mask_BT).astype(bool)


def token_mean(values_BT: jnp.ndarray, mask_BT: jnp.ndarray) -> jnp.ndarray:
  """sum_bt m_bt v_bt / max(sum_bt m_bt, 1), in fp32."""
  m_BT = _mask(mask_BT)
  v_BT = jnp.where(m_BT, values_BT.astype(jnp.float32), 0.0)
  return jnp.sum(v_BT) / jnp.maximum(jnp.sum(m_BT).astype(jnp.float32), 1.0)


def token_logprobs(logits_BTV: jnp.ndarray,
                   targets_BT: jnp.ndarray) -> jnp.ndarray:
  """logp_BT[b, t] = log_softmax(logits_BTV[b, t])[targets_BT[b, t]], fp32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(
      logp_BTV, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]


def token_entropy(logits_BTV: jnp.ndarray) -> jnp.ndarray:
  """H_BT = -sum_v p_v log p_v with p = softmax(logits), fp32."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp_BTV) * logp_BTV, axis=-1)


def sft_loss(logits_BTV: jnp.ndarray, targets_BT: jnp.ndarray,
             loss_mask_BT: jnp.ndarray
             ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Next-token cross-entropy on the masked-in (completion) tokens.

      loss = sum_bt m_bt * (-log softmax(z_bt)[y_bt]) / sum_bt m_bt
  Prompt tokens are excluded by `loss_mask_BT = 0`. Metrics: `loss`,
  `token_accuracy` (argmax == target), `num_tokens`.
  """
  m_BT = _mask(loss_mask_BT)
  # Padding targets (e.g. -1) under the mask must not index out of range.
  targets_BT = jnp.where(m_BT, targets_BT, 0)
  nll_BT = -token_logprobs(logits_BTV, targets_BT)
  loss = token_mean(nll_BT, m_BT)
  hit_BT = jnp.argmax(logits_BTV, axis=-1) == targets_BT
  return loss, {
      "loss": loss,
      "token_accuracy": token_mean(hit_BT.astype(jnp.float32), m_BT),
      "num_tokens": jnp.sum(m_BT).astype(jnp.float32),
  }


def kd_loss(student_logits_BTV: jnp.ndarray,
            teacher_logits_BTV: jnp.ndarray,
            mask_BT: jnp.ndarray,
            temperature: float = 1.0
            ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Token-level distillation: forward KL(teacher || student) at temperature T.

      p_t = softmax(z_teacher / T),  q_t = softmax(z_student / T)
      kl_bt = sum_v p_t,v (log p_t,v - log q_t,v)
      loss  = T^2 * sum_bt m_bt kl_bt / sum_bt m_bt
  The T^2 factor (Hinton et al., 2015) keeps gradient magnitudes comparable
  across temperatures, since d kl / d z_student scales as 1/T. The teacher is
  a constant (stop_gradient). Metrics: `loss`, `kl` (without T^2).
  """
  if temperature <= 0:
    raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
  m_BT = _mask(mask_BT)
  t = jnp.float32(temperature)
  logp_t = jax.nn.log_softmax(
      jax.lax.stop_gradient(teacher_logits_BTV).astype(jnp.float32) / t, -1)
  logq_s = jax.nn.log_softmax(student_logits_BTV.astype(jnp.float32) / t, -1)
  kl_BT = jnp.sum(jnp.exp(logp_t) * (logp_t - logq_s), axis=-1)
  kl = token_mean(kl_BT, m_BT)
  loss = t * t * kl
  return loss, {"loss": loss, "kl": kl}
