"""Wiring: optimizer, train state, and the jitted per-phase functions.

One jit per phase, built once per run and reused every step:
  - `logprob_fn(params, tokens, mask) -> logp [B, T-1]` (old and reference
    log-probs, route log-likelihoods),
  - `sft_step(state, batch) -> (state, metrics)`,
  - `rl_step(state, batch) -> (state, metrics)`.
State is donated. Batches are dicts of arrays; their shapes are bucketed by
the data layer so these compile a handful of times per run, not per step.

Shift convention: `logp[:, t] = log p(tokens[:, t+1] | tokens[:, :t+1])`, so a
mask over tokens becomes `mask[:, 1:]` over log-probs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from realm_jax import losses, model, mrpv, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class StepShardings:
  """Explicit shardings of a train step: the state tree, the batch (leading axis), metrics."""
  state: Any
  batch: Any
  replicated: Any


def lr_schedule(lr: float, warmup: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to lr/10 at `total_steps`."""
  decay = max(total_steps - warmup, 1)
  if warmup:
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, warmup + decay, end_value=lr * 0.1)
  return optax.cosine_decay_schedule(lr, decay, alpha=0.1)


def make_optimizer(lr: float, warmup: int, total_steps: int, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
  """AdamW on `lr_schedule`, after global-norm clipping."""
  schedule = lr_schedule(lr, warmup, total_steps)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay))


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def shard_state(state: TrainState, optimizer, model_cfg: model.ModelConfig, mesh
                ) -> tuple[TrainState, StepShardings]:
  """Places a train state on the mesh (params by their logical axes, optimizer
  moments like their params, counters replicated) and returns the step shardings."""
  param_sh = sharding.param_shardings(model_cfg, mesh)
  abstract = jax.eval_shape(lambda: state.params)
  state_sh = TrainState(step=sharding.replicated(mesh), params=param_sh,
                        opt_state=sharding.opt_state_shardings(optimizer, abstract, param_sh))
  state = jax.tree.map(sharding.put, state, state_sh)
  return state, StepShardings(state=state_sh, batch=sharding.leading_axis_sharding(mesh),
                              replicated=sharding.replicated(mesh))


def abstract_state(state: TrainState, shardings: StepShardings) -> TrainState:
  """Restore target: shapes, dtypes and this run's shardings (any mesh wrote it)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings.state)


def token_logprobs(params, cfg: model.ModelConfig, tokens_BT, mask_BT):
  """logp[:, t] of token t+1 under the model, fp32 [B, T-1]."""
  logits_BTV, _ = model.apply(params, cfg, tokens_BT, mask_BT)
  return losses.token_logprobs(logits_BTV[:, :-1], tokens_BT[:, 1:])


def _finish(state: TrainState, optimizer, grads, metrics):
  grad_norm = optax.global_norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=grad_norm)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_logprob_fn(cfg: model.ModelConfig) -> Callable:
  return jax.jit(lambda params, tokens, mask: token_logprobs(params, cfg, tokens, mask))


def make_teacher_logits_fn(cfg: model.ModelConfig) -> Callable:
  """Teacher logits [B, T-1, V] aligned with the student's shifted targets (no gradient)."""
  return jax.jit(lambda params, tokens, mask: model.apply(params, cfg, tokens, mask)[0][:, :-1])


def make_sft_step(cfg: model.ModelConfig, optimizer, kd_alpha: float = 0.0,
                  kd_temperature: float = 1.0, shardings: StepShardings | None = None) -> Callable:
  """batch: tokens, mask, loss_mask [B, T] (+ teacher_logits [B, T-1, V] when kd_alpha > 0).

  loss = (1 - a) * CE(completion tokens) + a * KL_T(teacher || student).
  """

  def loss_fn(params, batch):
    logits_BTV, _ = model.apply(params, cfg, batch["tokens"], batch["mask"])
    logits_BTV = logits_BTV[:, :-1]
    loss_mask = batch["loss_mask"][:, 1:]
    loss, metrics = losses.sft_loss(logits_BTV, batch["tokens"][:, 1:], loss_mask)
    if kd_alpha > 0:
      kd, kd_metrics = losses.kd_loss(logits_BTV, batch["teacher_logits"], loss_mask, kd_temperature)
      loss = (1 - kd_alpha) * loss + kd_alpha * kd
      metrics = dict(metrics, **{f"kd_{k}": v for k, v in kd_metrics.items()})
    return loss, dict(metrics, loss=loss)

  def step(state: TrainState, batch):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    return _finish(state, optimizer, grads, metrics)

  return _jit_step(step, shardings)


def route_loglik(params, cfg: model.ModelConfig, tokens_RT, mask_RT, loss_mask_RT):
  """Sequence log-likelihood of each route's tokens given its question, [R]."""
  logp = token_logprobs(params, cfg, tokens_RT, mask_RT)
  return jnp.sum(jnp.where(loss_mask_RT[:, 1:] > 0, logp, 0.0), axis=-1)


def rl_loss(params, batch, cfg: model.ModelConfig, loss_cfg: losses.LossConfig,
            contrast_coef: float, contrast_beta: float):
  """PPO-clip/GRPO loss on completions, plus the MRPV route-contrast term.

  batch: tokens, mask, completion_mask [N, T]; ref_logp [N, T-1]; adv [N];
  old_logp [N, T-1] when the rollout feeds several updates (else the current
  log-probs, stop-gradient, are the old ones); optional sampler_logp [N, T-1]; with contrast_coef > 0 also route_tokens/route_mask/route_loss_mask
  [B*K, Tr], route_ref_logp, route_labels, route_valid [B, K].
  """
  logits_NTV, _ = model.apply(params, cfg, batch["tokens"], batch["mask"])
  logits_NTV = logits_NTV[:, :-1]
  logp = losses.token_logprobs(logits_NTV, batch["tokens"][:, 1:])
  cmask = batch["completion_mask"][:, 1:]
  entropy = losses.token_entropy(logits_NTV)
  # One update per rollout: the old policy *is* this policy, so no separate forward pass.
  old_logp = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
  loss, metrics = losses.ppo_loss(logp, old_logp, batch["adv"], cmask, loss_cfg,
                                  ref_logp_BT=batch["ref_logp"], entropy_BT=entropy)
  if "sampler_logp" in batch:  # how far the sampler's numbers are from the trainer's
    gap = jnp.abs(jax.lax.stop_gradient(logp) - batch["sampler_logp"])
    metrics = dict(metrics, sampler_trainer_logp_gap=jnp.sum(jnp.where(cmask > 0, gap, 0.0))
                   / jnp.maximum(jnp.sum(cmask), 1))
  if "entropy" not in metrics:
    ent = jnp.sum(jnp.where(cmask > 0, jax.lax.stop_gradient(entropy), 0.0))
    metrics = dict(metrics, entropy=ent / jnp.maximum(jnp.sum(cmask), 1))
  if contrast_coef > 0:
    B, K = batch["route_labels"].shape
    pol = route_loglik(params, cfg, batch["route_tokens"], batch["route_mask"],
                       batch["route_loss_mask"]).reshape(B, K)
    margins, pair_mask = mrpv.route_pair_margins(pol, batch["route_ref_logp"],
                                                 batch["route_labels"], batch["route_valid"])
    c_loss, c_metrics = losses.route_contrast_loss(margins, pair_mask, contrast_beta)
    loss = loss + contrast_coef * c_loss
    metrics = dict(metrics, **{f"contrast_{k}": v for k, v in c_metrics.items()})
  return loss, dict(metrics, loss=loss)


def make_rl_step(cfg: model.ModelConfig, optimizer, loss_cfg: losses.LossConfig,
                 contrast_coef: float = 0.0, contrast_beta: float = 0.1,
                 shardings: StepShardings | None = None) -> Callable:

  def step(state: TrainState, batch):
    grad_fn = jax.value_and_grad(rl_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, batch, cfg, loss_cfg, contrast_coef, contrast_beta)
    return _finish(state, optimizer, grads, metrics)

  return _jit_step(step, shardings)


def _jit_step(step: Callable, shardings: StepShardings | None) -> Callable:
  """jit with the state donated and, on a mesh, explicit in/out shardings."""
  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, donate_argnums=0, in_shardings=(shardings.state, shardings.batch),
                 out_shardings=(shardings.state, shardings.replicated))
