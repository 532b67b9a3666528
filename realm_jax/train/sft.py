"""Guided CoT distillation (METHOD §4) and the supervised loop it runs on.

The teacher sees the question *and the rule book* (the domain solver cites
rules; a model teacher is prompted with them, see `teachers.model_teacher`);
teacher CoTs whose final answer does not verify are dropped; the student is
trained on (question [+ routes with gold verdicts], teacher CoT) pairs and
never sees the rules, so they must end up in its weights. Loss: next-token
cross-entropy on completion tokens, optionally mixed with token-level KD when
the teacher is a model sharing the tokenizer.

`run_sft` is the one supervised loop (base warm-up, distillation, RFT). It
resumes from its phase's latest checkpoint, data iterator included.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from realm_jax.train import checkpoint, metrics as metrics_lib, preemption, sharding, step as train_step
from realm_jax.data import pipeline as data
from realm_jax.data.answers import is_equivalent, extract_answer
from realm_jax.train.config import SFTConfig
from realm_jax.data.records import Example


def verified_teacher_examples(examples: Sequence[Example]) -> tuple[list[Example], int]:
  """Keeps examples whose teacher CoT ends in an answer that verifies; counts the rest."""
  kept, dropped = [], 0
  for ex in examples:
    if not ex.cot:
      dropped += 1
      continue
    predicted = extract_answer(ex.cot)
    # Teacher CoTs that state no final answer are judged by the recorded answer.
    if predicted is not None and not is_equivalent(predicted, ex.answer):
      dropped += 1
      continue
    kept.append(ex)
  return kept, dropped


@dataclasses.dataclass
class SFTContext:
  """Everything the loop needs that is not the config."""
  model_cfg: Any
  tokenizer: Any
  workdir: str
  writer: metrics_lib.MetricsWriter
  buckets: tuple[int, ...]
  seed: int
  mesh: Any = None
  memory_fraction: float = 0.9
  device_memory: int | None = None
  checkpoint_every: int = 100
  chat: bool = False  # wrap prompts in the tokenizer's chat template, as RL and eval do


def run_sft(phase: str, ctx: SFTContext, params: Any, pairs: Sequence[tuple[str, str]],
            cfg: SFTConfig, teacher_params: Any = None) -> Any:
  """Trains `params` on (prompt, completion) pairs for cfg.steps; returns new params.

  With cfg.kd_alpha > 0, `teacher_params` (a model of the same config and
  tokenizer) give the token-level KD targets: its logits on each batch.
  """
  if cfg.kd_alpha > 0 and teacher_params is None:
    raise ValueError(f"{phase}.kd_alpha={cfg.kd_alpha} needs a teacher model: set {phase}.kd_teacher")
  optimizer = train_step.make_optimizer(cfg.lr, cfg.warmup, cfg.steps, cfg.weight_decay,
                                        cfg.grad_clip)
  state, shardings = train_step.shard_state(train_step.init_state(params, optimizer), optimizer,
                                           ctx.model_cfg, ctx.mesh)
  if ctx.chat:
    pairs = [(ctx.tokenizer.apply_chat_template([{"role": "user", "content": p}]), c)
             for p, c in pairs]
  # cfg.batch_size is global: each process feeds its share of the rows.
  if cfg.batch_size % jax.process_count():
    raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {jax.process_count()} "
                     "processes; pick a multiple of the process count")
  batches = data.sft_batches(list(pairs), ctx.tokenizer, cfg.batch_size // jax.process_count(),
                             ctx.buckets, ctx.seed)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(ctx.workdir, phase), keep_last=2)
  start = 0
  latest = ckpt.latest_step()
  if latest is not None:
    state, extra = ckpt.restore(abstract_state=train_step.abstract_state(state, shardings))
    data.restore(batches, extra["data"])
    start = int(state.step)
  if start >= cfg.steps:
    ckpt.close()
    return state.params
  step_fn = train_step.make_sft_step(ctx.model_cfg, optimizer, cfg.kd_alpha, cfg.kd_temperature,
                                     shardings, microbatches=cfg.microbatches)
  rows, T = cfg.batch_size, ctx.buckets[-1]
  shape = jax.ShapeDtypeStruct((rows, T), jnp.int32, sharding=shardings.batch)
  abstract_batch = {"tokens": shape, "mask": shape, "loss_mask": shape}
  if cfg.kd_alpha > 0:
    abstract_batch["teacher_logits"] = jax.ShapeDtypeStruct(
        (rows, T - 1, ctx.model_cfg.vocab_size), jnp.float32, sharding=shardings.batch)
  metrics_lib.report_memory(phase, step_fn, (train_step.abstract_state(state, shardings),
                                             abstract_batch),
                            ctx.writer, ctx.memory_fraction, ctx.device_memory)
  teacher_fn = train_step.make_teacher_logits_fn(ctx.model_cfg) if cfg.kd_alpha > 0 else None

  def put(b):
    # This process's rows of the global batch -> one global array per field.
    b = {k: sharding.host_array_to_global(v, shardings.batch) for k, v in b.items()}
    if teacher_fn is not None:
      b["teacher_logits"] = teacher_fn(teacher_params, b["tokens"], b["mask"])
    return b
  bar = metrics_lib.progress(cfg.steps, start, phase)
  pending = None
  t0 = time.perf_counter()
  tokens_seen = 0
  try:
    for step in range(start, cfg.steps):
      batch = next(batches)
      tokens_seen += int(batch["mask"].sum())
      state, m = step_fn(state, put(batch))
      if pending is not None:  # read step n-1's metrics after dispatching step n
        _log(ctx, phase, *pending, bar, t0, tokens_seen)
      pending = (step, m)
      last = step + 1 == cfg.steps
      stop = preemption.requested()
      if last or stop or (step + 1) % ctx.checkpoint_every == 0:
        _log(ctx, phase, *pending, bar, t0, tokens_seen)  # NaN stops here, before saving
        pending = None
        check_finite_params(state.params, step, phase)
        ckpt.save(step + 1, state, extra={"data": data.get_state(batches)}, force=last or stop)
      if stop:
        raise preemption.Preempted(f"{phase} step {step + 1}")
  finally:  # waits for pending saves, on errors too: every save holds finite pre-failure state
    ckpt.close()
  bar.close()
  return state.params


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.isfinite(x).all(), tree),
                         jnp.bool_(True))


def check_finite_params(params: Any, step: int, phase: str) -> None:
  """Raises NonFiniteError if the update of `step` left NaN/Inf in `params`.

  The loops call it before each checkpoint: a step's loss and grad norm are
  computed before its update, so an overflowing update shows only here.
  """
  if not bool(_all_finite(params)):
    raise metrics_lib.NonFiniteError(
        f"{phase} step {step}: the updated params hold NaN/Inf; stopping (the last checkpoint "
        "on disk predates this step)")


def _log(ctx: SFTContext, phase: str, step: int, m: Any, bar, t0: float, tokens: int) -> None:
  host = metrics_lib.to_host(m)
  metrics_lib.check_finite(host, step, phase)
  host["tokens_per_s"] = tokens / max(time.perf_counter() - t0, 1e-9)
  ctx.writer.write(phase, step, host)
  bar.update(step + 1 - bar.n)
  bar.set_postfix(loss=f"{host.get('loss', float('nan')):.3f}")
