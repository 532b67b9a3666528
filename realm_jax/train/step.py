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

from realm_jax.train import losses
from realm_jax import model
from realm_jax.model import lora
from realm_jax.train import precision, sharding


@flax.struct.dataclass
class TrainState:
  """`params` is the whole model; with LoRA adapters (`model.lora`) the optimizer state
  covers the adapters only, and the jitted steps update and donate only them (`SplitStep`)."""
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
  """Linear warm-up, then cosine decay to lr/10 at `total_steps` (and lr/10 after).

      lr(t) = lr * (t + 1) / warmup                                       t < warmup
      lr(t) = lr/10 + (lr - lr/10) * (1 + cos(pi * min(t - warmup, D) / D)) / 2   t >= warmup
  with D = max(total_steps - warmup, 1). The first update (t = 0) runs at lr/warmup, not 0 (an
  update at lr 0 would be wasted and still move Adam's moments); lr is reached at t = warmup - 1.
  """
  decay = max(total_steps - warmup, 1)
  cosine = optax.cosine_decay_schedule(lr, decay, alpha=0.1)
  if warmup:
    ramp = optax.linear_schedule(lr / warmup, lr, max(warmup - 1, 1))
    return optax.join_schedules([ramp, cosine], [warmup])
  return cosine


def make_optimizer(lr: float, warmup: int, total_steps: int, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
  """AdamW on `lr_schedule`, after global-norm clipping."""
  schedule = lr_schedule(lr, warmup, total_steps)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay))


def init_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
  """Step 0; the optimizer state covers the trainable params (the adapters when there are
  any, `lora.split`); bf16 ones get fp32 master weights in it (`precision`)."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=precision.init_opt_state(optimizer, lora.split(params)[0]))


def shard_state(state: TrainState, optimizer, model_cfg: model.ModelConfig, mesh
                ) -> tuple[TrainState, StepShardings]:
  """Places a train state on the mesh (params by their logical axes, optimizer
  moments like their params, counters replicated) and returns the step shardings."""
  param_sh = sharding.param_shardings(model_cfg, mesh)
  trainable = lora.split(jax.eval_shape(lambda: state.params))[0]
  state_sh = TrainState(step=sharding.replicated(mesh), params=param_sh,
                        opt_state=precision.opt_state_shardings(
                            optimizer, trainable, lora.split(param_sh)[0]))
  state = jax.tree.map(sharding.put, state, state_sh)
  return state, StepShardings(state=state_sh, batch=sharding.leading_axis_sharding(mesh),
                              replicated=sharding.replicated(mesh))


def abstract_state(state: TrainState, shardings: StepShardings) -> TrainState:
  """Shapes, dtypes and this run's shardings of `state` (any mesh may have written a
  checkpoint of it); `checkpointed` of it is the restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings.state)


def checkpointed(state: TrainState) -> TrainState:
  """What a checkpoint holds: the state with its trainable params only (with LoRA, the
  adapters: the frozen base is the run's input, not its output). Any other state as is."""
  return state.replace(params=lora.split(state.params)[0]) if isinstance(state, TrainState) else state


def restored(saved: TrainState, live: TrainState) -> TrainState:
  """A restored `checkpointed` state with the frozen params of the live one put back."""
  if not isinstance(saved, TrainState):
    return saved
  return saved.replace(params=lora.merge(saved.params, lora.split(live.params)[1]))


def completion_logits(params, cfg: model.ModelConfig, tokens_BT, mask_BT,
                      completion_len: int | None = None):
  """Logits that predict tokens 1.., and those targets: ([B, L, V], [B, L]).

  With `completion_len=M` the rows hold left-padded prompts followed by M
  completion slots (a rollout's layout), and only the last M targets get
  logits (L = M): the lm_head and the softmax skip the prompt, which nothing
  downstream reads. Otherwise L = T - 1.
  """
  T = tokens_BT.shape[1]
  start = 0 if completion_len is None else max(T - 1 - int(completion_len), 0)
  logits_BLV, _ = model.apply(params, cfg, tokens_BT, mask_BT, logits_from=start)
  return logits_BLV[:, :-1], tokens_BT[:, start + 1:]


def pad_to_targets(x_BL: jax.Array, T: int) -> jax.Array:
  """Left-pads per-target values [B, L] with zeros to the full [B, T-1]."""
  return jnp.pad(x_BL, ((0, 0), (T - 1 - x_BL.shape[1], 0)))


def token_logprobs(params, cfg: model.ModelConfig, tokens_BT, mask_BT,
                   completion_len: int | None = None):
  """logp[:, t] of token t+1 under the model, fp32 [B, T-1].

  With `completion_len=M`, only the last M entries are computed (the rest are 0).
  """
  logits_BLV, targets_BL = completion_logits(params, cfg, tokens_BT, mask_BT, completion_len)
  return pad_to_targets(losses.token_logprobs(logits_BLV, targets_BL), tokens_BT.shape[1])


def split_microbatches(tree: Any, n: int) -> Any:
  """[N, ...] arrays -> [n, N/n, ...]; microbatch i holds rows i, i+n, i+2n, ...

  Strided, so a batch sharded in contiguous blocks over the data axes keeps
  every microbatch spread over all devices (each device loops over its own
  rows; no resharding).
  """
  def split(x):
    if x.shape[0] % n:
      raise ValueError(f"a batch of {x.shape[0]} rows does not split into {n} microbatches")
    return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, tree)


def merge_microbatches(tree: Any) -> Any:
  """Inverse of `split_microbatches`: [n, N/n, ...] -> [N, ...] in the original row order."""
  return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), tree)


def accumulate_grads(loss_fn: Callable, params: Any, batch: dict, n: int,
                     loss_weights_n: jax.Array, metric_weights_n: jax.Array,
                     loss_keys: tuple[str, ...] = ("loss",), max_keys: tuple[str, ...] = (),
                     layer_list: bool = False):
  """Gradient accumulation over `n` microbatches in one `lax.scan`.

  loss_fn(params, microbatch) -> (loss, metrics). Returns (loss, metrics,
  grads) with loss = sum_i w_i loss_i (and grads alike), w = `loss_weights_n`:
  the caller chooses w_i = D_i / D, the share of the loss's normaliser D
  (token count, sequence count) held by microbatch i, which makes the sum
  *equal* to the full-batch loss, not an average of microbatch means. Metrics
  are summed with `metric_weights_n` (token shares for token-mean metrics),
  except `loss_keys`, which use the loss weights, and `max_keys` (maxima of
  non-negative metrics). Only one microbatch's activations are alive at a
  time; gradients accumulate in fp32 and stay fp32 (n = 1: autodiff's, in the
  params' dtype): the optimizer runs in fp32 (over fp32 masters for bf16
  params, `precision.apply_update`), so rounding the sum to bf16 would only lose bits.

  `layer_list=True` (models whose layers run unrolled, `scan_layers=False`):
  the stacked layer params are sliced into per-layer subtrees once
  (`model.unstack_layers`), not again in every microbatch, and the summed
  gradients are stacked back once (measured 2-3% off the benchmark's step).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads
  stacked = layer_list and "layers" in params.get("model", {})
  if stacked:
    params = model.unstack_layers(params)
  mbs = split_microbatches(batch, n)
  first = jax.tree.map(lambda x: x[0], mbs)
  _, metrics_shape = jax.eval_shape(loss_fn, params, first)
  zeros = lambda t: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), t)

  def body(carry, xs):
    g_acc, l_acc, m_acc = carry
    mb, wl, wm = xs
    (loss, metrics), grads = grad_fn(params, mb)
    g_acc = jax.tree.map(lambda a, g: a + wl * g.astype(jnp.float32), g_acc, grads)
    m_acc = {k: (jnp.maximum(m_acc[k], v) if k in max_keys else
                 m_acc[k] + (wl if k in loss_keys else wm) * v) for k, v in metrics.items()}
    return (g_acc, l_acc + wl * loss, m_acc), None

  (grads, loss, metrics), _ = jax.lax.scan(
      body, (zeros(params), jnp.zeros((), jnp.float32), zeros(metrics_shape)),
      (mbs, loss_weights_n, metric_weights_n))
  return loss, metrics, (model.stack_layers(grads) if stacked else grads)


def shares(counts_n: jax.Array) -> jax.Array:
  """Each microbatch's share of a normaliser, D_i / max(D, 1) (all 0 when D = 0)."""
  counts_n = counts_n.astype(jnp.float32)
  return counts_n / jnp.maximum(jnp.sum(counts_n), 1.0)


def _finish(state: TrainState, optimizer, grads, metrics):
  grad_norm = optax.global_norm(jax.tree.map(lambda g: g.astype(jnp.float32), grads))
  params, opt_state = precision.apply_update(optimizer, grads, state.opt_state, state.params)
  metrics = dict(metrics, grad_norm=grad_norm)
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_logprob_fn(cfg: model.ModelConfig, completion_len: int | None = None,
                    microbatches: int = 1) -> Callable:
  """Jitted `token_logprobs`; with `microbatches=n` the rows run n at a time
  (`lax.map` over strided microbatches): same numbers, 1/n of the activations."""

  def fn(params, tokens, mask):
    if microbatches == 1:
      return token_logprobs(params, cfg, tokens, mask, completion_len)
    out = jax.lax.map(lambda tm: token_logprobs(params, cfg, tm[0], tm[1], completion_len),
                      split_microbatches((tokens, mask), microbatches))
    return merge_microbatches(out)

  return jax.jit(fn)


def make_teacher_logits_fn(cfg: model.ModelConfig) -> Callable:
  """Teacher logits [B, T-1, V] aligned with the student's shifted targets (no gradient)."""
  return jax.jit(lambda params, tokens, mask: model.apply(params, cfg, tokens, mask)[0][:, :-1])


def make_sft_step(cfg: model.ModelConfig, optimizer, kd_alpha: float = 0.0,
                  kd_temperature: float = 1.0, shardings: StepShardings | None = None,
                  microbatches: int = 1) -> Callable:
  """batch: tokens, mask, loss_mask [B, T] (+ teacher_logits [B, T-1, V] when kd_alpha > 0).

  loss = (1 - a) * CE(completion tokens) + a * KL_T(teacher || student), both
  token means over the loss mask. `microbatches=n` accumulates the gradient
  over n microbatches weighted by their share of loss tokens: the same loss
  and gradient as one pass, with 1/n of the activations.
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

  def step(state: TrainState, batch, frozen):
    w = None
    if microbatches > 1:
      counts = jnp.sum(split_microbatches(batch["loss_mask"][:, 1:] > 0, microbatches), (1, 2))
      w = shares(counts)
    _, metrics, grads = accumulate_grads(
        with_frozen(loss_fn, frozen, unstacked=microbatches > 1 and not cfg.scan_layers),
        state.params, batch, microbatches, w, w, layer_list=not cfg.scan_layers)
    return _finish(state, optimizer, grads, metrics)

  return _jit_step(step, shardings)


def with_frozen(loss_fn: Callable, frozen: Any, unstacked: bool = False) -> Callable:
  """`loss_fn(params, batch)` as a function of the trainable params, the frozen ones merged
  in (`lora.merge`; frozen None: the params are all trainable). `unstacked`: the trainable
  params arrive as per-layer subtrees (`accumulate_grads` with `layer_list`), so the frozen
  layers are sliced the same way, once, here."""
  if frozen is None:
    return loss_fn
  if unstacked and "layers" in frozen.get("model", {}):
    frozen = model.unstack_layers(frozen)
  return lambda params, batch: loss_fn(lora.merge(params, frozen), batch)


class SplitStep:
  """`step(state, batch) -> (state, metrics)` over a jitted `fn(state, batch, frozen)`
  whose state holds the trainable params only (`lora.split`): the frozen ones (LoRA's
  base) go in as an argument that is neither donated nor returned, so other holders of
  them (the RL reference) stay valid and nothing copies them."""

  def __init__(self, jitted: Callable):
    self.jitted = jitted

  def _split(self, state: TrainState):
    trainable, frozen = lora.split(state.params)
    return state.replace(params=trainable), frozen

  def __call__(self, state: TrainState, batch):
    inner, frozen = self._split(state)
    new, metrics = self.jitted(inner, batch, frozen)
    return new.replace(params=lora.merge(new.params, frozen)), metrics

  def lower(self, state: TrainState, batch):
    inner, frozen = self._split(state)
    return self.jitted.lower(inner, batch, frozen)


def _jit_step(step: Callable, shardings: StepShardings | None) -> SplitStep:
  """jit with the trainable state donated and, on a mesh, explicit in/out shardings."""
  if shardings is None:
    return SplitStep(jax.jit(step, donate_argnums=0))
  trainable, frozen = lora.split(shardings.state.params)
  state_sh = shardings.state.replace(params=trainable)
  return SplitStep(jax.jit(step, donate_argnums=0,
                           in_shardings=(state_sh, shardings.batch, frozen),
                           out_shardings=(state_sh, shardings.replicated)))
