"""The RL update: a policy loss on completions, the MRPV route-contrast term,
and their jitted step (gradient accumulation from `train.step`).

Shift convention as in `train.step`: `logp[:, t]` scores token t+1, so a mask
over tokens becomes `mask[:, 1:]` over log-probs.

Log-probs of completions are under the distribution the sampler drew from,

    q(v) ∝ exp(l_v / tau)   restricted to top-k, then top-p   (`sampling.filter_logits`),

for the rollout's old, reference and current policies alike: the trainer
applies the same temperature and filters to its logits, so its log-probs of a
rollout equal the sampler's `Rollout.logprobs` (up to float error) and the
PPO ratio, the KL and the entropy are all those of q. With tau = 1 and no
filter (or greedy, tau = 0) q is the model's softmax. What remains of the
sampler/trainer gap (kernels, precision) is the truncated importance weight
`losses.tis_weights` when `LossConfig.tis_cap` is set.

Metrics of a policy loss reduce over microbatches by name: `*loss` with the
loss's own weights, `*_max` as a maximum, every other one as a token-share mean.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from realm_jax import model
from realm_jax.model import sampling
from realm_jax.rl import losses, mrpv
from realm_jax.rl.batch import RouteBatch, UpdateBatch
from realm_jax.train import losses as train_losses
from realm_jax.model import lora
from realm_jax.train.step import (StepShardings, TrainState, _finish, _jit_step, accumulate_grads,
                                  completion_logits, merge_microbatches, pad_to_targets, shares,
                                  split_microbatches, token_logprobs, with_frozen)

PolicyLoss = Callable[..., tuple[jax.Array, dict]]


def route_loglik(params, cfg: model.ModelConfig, tokens_RT, mask_RT, loss_mask_RT):
  """Sequence log-likelihood of each route's tokens given its question, [R]."""
  logp = token_logprobs(params, cfg, tokens_RT, mask_RT)
  return jnp.sum(jnp.where(loss_mask_RT[:, 1:] > 0, logp, 0.0), axis=-1)


def sampled_logits(logits_NLV: jax.Array, scfg: sampling.SamplingConfig | None) -> jax.Array:
  """Logits of q (see the module docstring): l / tau with -1e30 outside top-k/top-p.

  A large finite value rather than -inf keeps the entropy (0 * log 0) finite.
  """
  if scfg is None or scfg.plain or scfg.greedy:
    return logits_NLV
  N, L, V = logits_NLV.shape
  x = sampling.filter_logits(logits_NLV.reshape(N * L, V), scfg).reshape(N, L, V)
  return jnp.where(jnp.isneginf(x), -1e30, x)


def sampled_logprobs(params, cfg: model.ModelConfig, tokens_NT, mask_NT,
                     scfg: sampling.SamplingConfig | None = None,
                     completion_len: int | None = None) -> tuple[jax.Array, jax.Array]:
  """(log q of token t+1, entropy of q) at every slot, fp32 [N, T-1] each (0 before the
  last `completion_len` slots when given)."""
  T = tokens_NT.shape[1]
  logits_NLV, targets_NL = completion_logits(params, cfg, tokens_NT, mask_NT, completion_len)
  logits_NLV = sampled_logits(logits_NLV, scfg)
  return (pad_to_targets(train_losses.token_logprobs(logits_NLV, targets_NL), T),
          pad_to_targets(train_losses.token_entropy(logits_NLV), T))


def make_logprob_fn(cfg: model.ModelConfig, scfg: sampling.SamplingConfig | None = None,
                    completion_len: int | None = None, microbatches: int = 1) -> Callable:
  """Jitted `fn(params, tokens, mask) -> log q [N, T-1]`; `microbatches=n` runs the rows n
  at a time (`lax.map` over strided microbatches): same numbers, 1/n of the activations."""

  def one(params, tokens, mask):
    return sampled_logprobs(params, cfg, tokens, mask, scfg, completion_len)[0]

  def fn(params, tokens, mask):
    if microbatches == 1:
      return one(params, tokens, mask)
    out = jax.lax.map(lambda tm: one(params, *tm), split_microbatches((tokens, mask), microbatches))
    return merge_microbatches(out)

  return jax.jit(fn)


def policy_loss(params, batch: UpdateBatch, cfg: model.ModelConfig, loss_cfg: losses.LossConfig,
                completion_len: int | None = None, loss_fn: PolicyLoss = losses.ppo_loss,
                scfg: sampling.SamplingConfig | None = None):
  """`loss_fn` (default PPO-clip, `losses.ppo_loss` gives the signature) on the completions.

  Old log-probs are `batch.old_logp`, else the current ones (stop-gradient: one
  update per rollout, the old policy *is* this policy). With `loss_cfg.tis_cap`
  the per-token loss is weighted by `losses.tis_weights(old, batch.sampler_logp)`.
  `completion_len=M` (the rollout's static completion budget) computes logits
  for the completion targets only; the result is the same.
  """
  logp, entropy = sampled_logprobs(params, cfg, batch.tokens, batch.mask, scfg, completion_len)
  cmask = batch.completion_mask[:, 1:]
  old_logp = batch.old_logp if batch.old_logp is not None else jax.lax.stop_gradient(logp)
  weight, extra = None, {}
  if loss_cfg.tis_cap is not None and batch.sampler_logp is not None:
    weight, extra = losses.tis_weights(old_logp, batch.sampler_logp, cmask, loss_cfg.tis_cap)
  loss, metrics = loss_fn(logp, old_logp, batch.adv, cmask, loss_cfg, ref_logp_BT=batch.ref_logp,
                          entropy_BT=entropy, weight_BT=weight)
  if batch.sampler_logp is not None:  # how far the sampler's numbers are from the trainer's
    gap = jnp.abs(jax.lax.stop_gradient(logp) - batch.sampler_logp)
    extra["sampler_trainer_logp_gap"] = (jnp.sum(jnp.where(cmask > 0, gap, 0.0))
                                         / jnp.maximum(jnp.sum(cmask), 1))
  return loss, dict(metrics, **extra)


def contrast_loss(params, route: RouteBatch, cfg: model.ModelConfig, contrast_beta: float,
                  frozen=None):
  """MRPV route-contrast loss from one teacher-forced pass over the routes (`params` the
  trainable ones, `frozen` the rest, as in `train.step.with_frozen`)."""
  B, K = route.labels.shape
  pol = route_loglik(lora.merge(params, frozen), cfg, route.tokens, route.mask, route.loss_mask).reshape(B, K)
  margins, pair_mask = mrpv.route_pair_margins(pol, route.ref_logp, route.labels, route.valid)
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


def metric_reductions(names) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(metrics weighted like the loss: `*loss`, maxima: `*_max`) among `names`."""
  return (tuple(k for k in names if k.endswith("loss")),
          tuple(k for k in names if k.endswith("_max")))


def make_rl_step(cfg: model.ModelConfig, optimizer, loss_cfg: losses.LossConfig,
                 contrast_coef: float = 0.0, contrast_beta: float = 0.1,
                 shardings: StepShardings | None = None,
                 completion_len: int | None = None, microbatches: int = 1,
                 loss_fn: PolicyLoss = losses.ppo_loss,
                 scfg: sampling.SamplingConfig | None = None) -> Callable:
  """Jitted `step(state, UpdateBatch) -> (state, metrics)`: the gradient of `policy_loss` +
  contrast_coef * `contrast_loss` (on `batch.route`), then the optimizer.

  `completion_len`: batches are rollouts with this many completion slots
  after the prompt (logits for those only, see `policy_loss`).
  `microbatches=n`: the policy loss accumulates over n microbatches of
  completions, weighted by their share of its normaliser (`policy_loss_shares`,
  which assumes the loss aggregates like `losses.aggregate`), so loss and
  gradient equal the one-pass values; the route-contrast term runs once on
  the whole route batch.
  """

  def loss(params, rows):
    return policy_loss(params, rows, cfg, loss_cfg, completion_len, loss_fn, scfg)

  def step(state: TrainState, batch: UpdateBatch, frozen):
    rows = batch.replace(route=None)
    w_loss = w_tok = None
    if microbatches > 1:
      w_loss, w_tok = policy_loss_shares(rows.completion_mask, microbatches, loss_cfg)
    loss_keys, max_keys = metric_reductions(
        jax.eval_shape(loss, lora.merge(state.params, frozen), rows)[1])
    total, metrics, grads = accumulate_grads(
        with_frozen(loss, frozen, unstacked=microbatches > 1 and not cfg.scan_layers),
        state.params, rows, microbatches, w_loss, w_tok, loss_keys=loss_keys, max_keys=max_keys,
        layer_list=not cfg.scan_layers)
    if contrast_coef > 0:
      (c_loss, c_metrics), c_grads = jax.value_and_grad(contrast_loss, has_aux=True)(
          state.params, batch.route, cfg, contrast_beta, frozen)
      total = total + contrast_coef * c_loss
      grads = jax.tree.map(lambda g, c: g + contrast_coef * c, grads, c_grads)
      metrics = dict(metrics, **c_metrics)
    return _finish(state, optimizer, grads, dict(metrics, loss=total))

  return _jit_step(step, shardings)
