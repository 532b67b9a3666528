"""The RL stage: `RLLoop` steps on the shared skeleton (`train.loop.run_loop`).

`run_rl` builds the optimizer, the sharded train state, the reference model
(the params RL starts from) and the prompt iterator, and hands `RLStepper` to
the skeleton, which restores, logs, checkpoints and stops on a signal.

`RLStepper` holds the host state a step depends on, saved with every
checkpoint: the prompt-iterator position, the EAAI clock and the running
autonomous accuracy `acc_ema`. After each step

  acc_ema <- a                          (first measured step)
  acc_ema <- 0.9 * acc_ema + 0.1 * a    (a = accuracy without routes, when measured)
  clock   <- eaai.advance_clock(clock, acc_ema)

so with a gate the schedule's clock may lag the step (both are restored).
"""

from __future__ import annotations

import math
from typing import Any

import jax

from realm_jax.data import pipeline as data
from realm_jax.model import lora
from realm_jax.rl import eaai, loop as rl_loop
from realm_jax.train import loop, metrics as metrics_lib, sharding, step as train_step


def _draw(batches, n: int) -> list:
  """n fresh prompts: whole batches from the run's prompt stream, the last one cut."""
  out: list = []
  while len(out) < n:
    out.extend(next(batches))
  return out[:n]


class RLStepper:
  """One `RLLoop.step` per call, then the EMA and EAAI clock update."""

  def __init__(self, rl: rl_loop.RLLoop, ref_params: Any, batches, eaai_cfg: eaai.EAAIConfig,
               reference: str):
    self.rl, self.ref_params, self.batches = rl, ref_params, batches
    self.eaai_cfg, self.reference = eaai_cfg, reference
    self.clock, self.acc_ema = 0, None

  def __call__(self, state: Any, step: int) -> tuple[Any, dict[str, Any]]:
    state, m = self.rl.step(state, self.ref_params, next(self.batches), step, self.clock)
    # The gate reads a running (EMA) autonomous accuracy; none yet -> the clock advances.
    auto = m["accuracy_no_routes"]
    if not math.isnan(auto):
      self.acc_ema = auto if self.acc_ema is None else 0.9 * self.acc_ema + 0.1 * auto
    self.clock = int(eaai.advance_clock(self.clock, self.acc_ema, self.eaai_cfg))
    return state, m

  def host_state(self) -> dict[str, Any]:
    return {"data": data.get_state(self.batches), "eaai_clock": self.clock,
            "acc_ema": self.acc_ema, "reference": self.reference}

  def load_host_state(self, extra: dict[str, Any]) -> None:
    data.restore(self.batches, extra["data"])
    self.clock, self.acc_ema = int(extra["eaai_clock"]), extra.get("acc_ema")


def reference_params(params: Any) -> Any:
  """The RL reference: the params RL starts from. The train state's trainable buffers are
  donated every step, so those are copied; with LoRA that is the adapters only, and the
  reference shares the frozen base's buffers (the steps never donate or update them)."""
  trainable, frozen = lora.split(params)
  return lora.merge(jax.tree.map(lambda x: x.copy(), trainable), frozen)


def run_rl(ctx: Any, workdir: str, writer: metrics_lib.MetricsWriter, params: Any,
           reference: str, validate: loop.Validate | None = None) -> Any:
  """RL from `params` (also the reference model, recorded as `reference`); returns new params.

  `ctx` is the run's context (`cli.train.Context`): `cfg` (the experiment
  config), `model_cfg`, `tokenizer`, `data.train`, `mesh`, `chat`. With
  `cfg.rl.eval_every` > 0, `validate(params)` (validation accuracy without routes)
  joins the rows beside the rollouts' `accuracy*`, keeps the best checkpoint and
  drives `rl.patience` / `rl.select`; otherwise the best by rollout `accuracy` is kept
  and the stage ends with its last params.
  """
  cfg = ctx.cfg
  params = jax.tree.map(sharding.put, params, sharding.param_shardings(ctx.model_cfg, ctx.mesh))
  ref_params = reference_params(params)
  eaai_cfg = cfg.eaai_config()
  updates = cfg.rl.steps * cfg.rl.num_inner_updates * cfg.rl.num_minibatches
  optimizer = train_step.make_optimizer(cfg.rl.lr, cfg.rl.warmup, updates, cfg.rl.weight_decay,
                                        cfg.rl.grad_clip)
  state, shardings = train_step.shard_state(train_step.init_state(params, optimizer), optimizer,
                                           ctx.model_cfg, ctx.mesh)
  abstract_state = train_step.abstract_state(state, shardings)
  # Every process draws the same global batch of prompts (text is tiny); the
  # device work (rollouts, updates) is what is sharded over the mesh.
  batches = data.rl_batches(ctx.data.train, cfg.rl.batch_prompts, cfg.seed, process_index=0,
                            process_count=1)
  rl_ctx = rl_loop.RLContext(model_cfg=ctx.model_cfg, tokenizer=ctx.tokenizer,
                             prompt_buckets=cfg.data.prompt_buckets,
                             route_buckets=cfg.data.sft_buckets, seed=cfg.seed, chat=ctx.chat)
  rl = rl_loop.RLLoop(rl_ctx, cfg.rl, eaai_cfg, optimizer, shardings)
  # DAPO dynamic sampling refills from the same seeded stream (its position is checkpointed).
  rl.more_examples = lambda n: _draw(batches, n)
  metrics_lib.report_memory("rl", rl.update, (abstract_state, rl.abstract_batch(shardings)),
                            writer, cfg.max_memory_fraction, cfg.device_memory_bytes)
  # RL reads its metrics on the host inside the step (rewards, clock): nothing to pipeline.
  loop_cfg = loop.LoopConfig(phase="rl", steps=cfg.rl.steps, checkpoint_every=cfg.checkpoint_every,
                             keep_checkpoints=cfg.keep_checkpoints,
                             finite_keys=("loss", "grad_norm", "reward"),
                             postfix=("reward", "accuracy", "p_routes"), pipelined=False,
                             **{"best_metric": "accuracy",
                                **loop.convergence(cfg.rl, validate is not None)})
  state = loop.run_loop(loop_cfg, workdir, writer, state, abstract_state,
                        RLStepper(rl, ref_params, batches, eaai_cfg, reference), validate)
  return state.params
