"""The RL update: policy-gradient loss on completions, the MRPV route-contrast
term, and their jitted step (gradient accumulation from `train.step`).

Shift convention as in `train.step`: `logp[:, t]` scores token t+1, so a mask
over tokens becomes `mask[:, 1:]` over log-probs.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from realm_jax.rl import losses, mrpv
from realm_jax import model
from realm_jax.train.step import (StepShardings, TrainState, _finish, _jit_step, accumulate_grads,
                                  completion_logits, pad_to_targets, shares,
                                  split_microbatches, token_logprobs)
from realm_jax.train import losses as train_losses


def route_loglik(params, cfg: model.ModelConfig, tokens_RT, mask_RT, loss_mask_RT):
  """Sequence log-likelihood of each route's tokens given its question, [R]."""
  logp = token_logprobs(params, cfg, tokens_RT, mask_RT)
  return jnp.sum(jnp.where(loss_mask_RT[:, 1:] > 0, logp, 0.0), axis=-1)


def policy_loss(params, batch, cfg: model.ModelConfig, loss_cfg: losses.LossConfig,
                completion_len: int | None = None):
  """PPO-clip/GRPO loss on completions (`losses.ppo_loss`) and its metrics.

  batch: tokens, mask, completion_mask [N, T]; ref_logp [N, T-1]; adv [N];
  old_logp [N, T-1] when the rollout feeds several updates (else the current
  log-probs, stop-gradient, are the old ones); optional sampler_logp [N, T-1].
  `completion_len=M` (the rollout's static completion budget) computes logits
  for the completion targets only; the result is the same.
  """
  T = batch["tokens"].shape[1]
  logits_NLV, targets_NL = completion_logits(params, cfg, batch["tokens"], batch["mask"],
                                             completion_len)
  logp = pad_to_targets(train_losses.token_logprobs(logits_NLV, targets_NL), T)
  cmask = batch["completion_mask"][:, 1:]
  entropy = pad_to_targets(train_losses.token_entropy(logits_NLV), T)
  # One update per rollout: the old policy *is* this policy, so no separate forward pass.
  old_logp = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
  loss, metrics = losses.ppo_loss(logp, old_logp, batch["adv"], cmask, loss_cfg,
                                  ref_logp_BT=batch["ref_logp"], entropy_BT=entropy)
  if "sampler_logp" in batch:  # how far the sampler's numbers are from the trainer's
    gap = jnp.abs(jax.lax.stop_gradient(logp) - batch["sampler_logp"])
    metrics = dict(metrics, sampler_trainer_logp_gap=jnp.sum(jnp.where(cmask > 0, gap, 0.0))
                   / jnp.maximum(jnp.sum(cmask), 1))
  return loss, metrics


def contrast_loss(params, batch, cfg: model.ModelConfig, contrast_beta: float):
  """MRPV route-contrast loss from one teacher-forced pass over the routes.

  batch: route_tokens/route_mask/route_loss_mask [B*K, Tr], route_ref_logp,
  route_labels, route_valid [B, K].
  """
  B, K = batch["route_labels"].shape
  pol = route_loglik(params, cfg, batch["route_tokens"], batch["route_mask"],
                     batch["route_loss_mask"]).reshape(B, K)
  margins, pair_mask = mrpv.route_pair_margins(pol, batch["route_ref_logp"],
                                               batch["route_labels"], batch["route_valid"])
  c_loss, c_metrics = losses.route_contrast_loss(margins, pair_mask, contrast_beta)
  return c_loss, {f"contrast_{k}": v for k, v in c_metrics.items()}


def policy_loss_shares(cmask_NT: jax.Array, n: int, loss_cfg: losses.LossConfig):
  """(loss weights, token-share weights) of n strided microbatches of a completion mask.

  The loss normaliser of `losses.aggregate` is the token count for
  `token_mean` and the number of sequences with a counted token otherwise.
  """
  m = split_microbatches(cmask_NT[:, 1:] > 0, n)             # [n, N/n, T-1]
  tokens_n = jnp.sum(m, axis=(1, 2))
  seqs_n = jnp.sum(jnp.any(m, axis=2), axis=1)
  loss_w = shares(tokens_n if loss_cfg.aggregation == "token_mean" else seqs_n)
  return loss_w, shares(tokens_n)


ROW_KEYS = ("tokens", "mask", "completion_mask", "ref_logp", "adv", "old_logp", "sampler_logp")


def make_rl_step(cfg: model.ModelConfig, optimizer, loss_cfg: losses.LossConfig,
                 contrast_coef: float = 0.0, contrast_beta: float = 0.1,
                 shardings: StepShardings | None = None,
                 completion_len: int | None = None, microbatches: int = 1) -> Callable:
  """Jitted RL update: the gradient of `policy_loss` + contrast_coef * `contrast_loss`, then
  the optimizer.

  `completion_len`: batches are rollouts with this many completion slots
  after the prompt (logits for those only, see `policy_loss`).
  `microbatches=n`: the policy loss accumulates over n microbatches of
  completions, weighted by their share of its normaliser (`policy_loss_shares`),
  so loss and gradient equal the one-pass values; the route-contrast term runs
  once on the whole route batch.
  """

  def step(state: TrainState, batch):
    rows = {k: v for k, v in batch.items() if k in ROW_KEYS}
    w_loss = w_tok = None
    if microbatches > 1:
      w_loss, w_tok = policy_loss_shares(rows["completion_mask"], microbatches, loss_cfg)
    loss, metrics, grads = accumulate_grads(
        lambda p, b: policy_loss(p, b, cfg, loss_cfg, completion_len), state.params, rows,
        microbatches, w_loss, w_tok, loss_keys=("loss", "pg_loss"), max_keys=("ratio_max",),
        layer_list=not cfg.scan_layers)
    if contrast_coef > 0:
      (c_loss, c_metrics), c_grads = jax.value_and_grad(contrast_loss, has_aux=True)(
          state.params, batch, cfg, contrast_beta)
      loss = loss + contrast_coef * c_loss
      grads = jax.tree.map(lambda g, c: g + contrast_coef * c, grads, c_grads)
      metrics = dict(metrics, **c_metrics)
    return _finish(state, optimizer, grads, dict(metrics, loss=loss))

  return _jit_step(step, shardings)
