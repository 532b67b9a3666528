"""Guided CoT distillation (METHOD §4) and the supervised loop it runs on.

The teacher sees the question *and the rule book* (the domain solver cites
rules; a model teacher is prompted with them, see `teachers.model_teacher`);
teacher CoTs whose final answer does not verify are dropped; the student is
trained on (question [+ routes with gold verdicts], teacher CoT) pairs and
never sees the rules, so they must end up in its weights. Loss: next-token
cross-entropy on completion tokens, optionally mixed with token-level KD when
the teacher is a model sharing the tokenizer.

`run_sft` runs the supervised stages (base warm-up, distillation, RFT rounds)
on the shared skeleton `train.loop.run_loop`: this module supplies the step
(`SFTStepper`: next batch, optional teacher logits, jitted update) and its
checkpointed host state (the data-iterator position). With `cfg.eval_every` > 0
the caller's `validate(params)` (the run's validation accuracy) is logged as
`valid_accuracy`, keeps the best checkpoint, and drives `patience` / `select`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from realm_jax.data import pipeline as data
from realm_jax.data.answers import extract_answer, is_equivalent
from realm_jax.data.records import Example
from realm_jax.train import generation, loop, metrics as metrics_lib, sharding
from realm_jax.train import step as train_step
from realm_jax.train.config import SFTConfig


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
  checkpoint_every: int = 100  # 0: save only at the end and on a stop
  keep_checkpoints: int = 2
  chat: bool = False  # wrap prompts in the tokenizer's chat template, as RL and eval do


class SFTStepper:
  """One supervised update per call: the next batch (+ teacher logits) through `step_fn`."""

  def __init__(self, step_fn: Callable, batches, put: Callable):
    self.step_fn, self.batches, self.put = step_fn, batches, put
    self.t0, self.tokens = time.perf_counter(), 0

  def __call__(self, state: Any, step: int) -> tuple[Any, dict[str, Any]]:
    batch = next(self.batches)
    self.tokens += int(batch["mask"].sum())
    state, m = self.step_fn(state, self.put(batch))
    # Tokens fed since this process started the phase, per second of wall clock.
    return state, {**m, "tokens_per_s": self.tokens / max(time.perf_counter() - self.t0, 1e-9)}

  def host_state(self) -> dict[str, Any]:
    return {"data": data.get_state(self.batches)}

  def load_host_state(self, extra: dict[str, Any]) -> None:
    data.restore(self.batches, extra["data"])


def _abstract_batch(cfg: SFTConfig, ctx: SFTContext, shardings) -> dict:
  rows, T = cfg.batch_size, ctx.buckets[-1]
  shape = jax.ShapeDtypeStruct((rows, T), jnp.int32, sharding=shardings.batch)
  batch = {"tokens": shape, "mask": shape, "loss_mask": shape}
  if cfg.kd_alpha > 0:
    batch["teacher_logits"] = jax.ShapeDtypeStruct(
        (rows, T - 1, ctx.model_cfg.vocab_size), jnp.float32, sharding=shardings.batch)
  return batch


def run_sft(phase: str, ctx: SFTContext, params: Any, pairs: Sequence[tuple[str, str]],
            cfg: SFTConfig, teacher_params: Any = None,
            validate: loop.Validate | None = None) -> Any:
  """Trains `params` on (prompt, completion) pairs for cfg.steps (or to a plateau); returns new
  params: with validation and `cfg.select='best'` those of the best validation.

  With cfg.kd_alpha > 0, `teacher_params` (a model of the same config and
  tokenizer) give the token-level KD targets: its logits on each batch.
  `validate(params) -> {loop.VALID_METRIC: ..., ...}` runs every `cfg.eval_every` steps;
  without it (or with eval_every=0) the stage runs its steps and ends with the last params.
  """
  if cfg.kd_alpha > 0 and teacher_params is None:
    raise ValueError(f"{phase}.kd_alpha={cfg.kd_alpha} needs a teacher model: set {phase}.kd_teacher")
  # cfg.batch_size is global: each process feeds its share of the rows.
  if cfg.batch_size % jax.process_count():
    raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {jax.process_count()} "
                     "processes; pick a multiple of the process count")
  optimizer = train_step.make_optimizer(cfg.lr, cfg.warmup, cfg.steps, cfg.weight_decay,
                                        cfg.grad_clip)
  state, shardings = train_step.shard_state(train_step.init_state(params, optimizer), optimizer,
                                           ctx.model_cfg, ctx.mesh)
  abstract_state = train_step.abstract_state(state, shardings)
  if ctx.chat:
    pairs = [(generation.chat_prompt(ctx.tokenizer, p), c) for p, c in pairs]
  batches = data.sft_batches(list(pairs), ctx.tokenizer, cfg.batch_size // jax.process_count(),
                             ctx.buckets, ctx.seed, group_by_bucket=cfg.group_by_bucket)
  step_fn = train_step.make_sft_step(ctx.model_cfg, optimizer, cfg.kd_alpha, cfg.kd_temperature,
                                     shardings, microbatches=cfg.microbatches)
  metrics_lib.report_memory(phase, step_fn, (abstract_state, _abstract_batch(cfg, ctx, shardings)),
                            ctx.writer, ctx.memory_fraction, ctx.device_memory)
  teacher_fn = train_step.make_teacher_logits_fn(ctx.model_cfg) if cfg.kd_alpha > 0 else None

  def put(b):
    # This process's rows of the global batch -> one global array per field.
    b = {k: sharding.host_array_to_global(v, shardings.batch) for k, v in b.items()}
    if teacher_fn is not None:
      b["teacher_logits"] = teacher_fn(teacher_params, b["tokens"], b["mask"])
    return b
  loop_cfg = loop.LoopConfig(phase=phase, steps=cfg.steps, checkpoint_every=ctx.checkpoint_every,
                             keep_checkpoints=ctx.keep_checkpoints,
                             **loop.convergence(cfg, validate is not None))
  state = loop.run_loop(loop_cfg, ctx.workdir, ctx.writer, state, abstract_state,
                        SFTStepper(step_fn, batches, put), validate)
  return state.params
