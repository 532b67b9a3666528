"""`realm-jax train EXPERIMENT --workdir DIR`: runs an experiment's stages.

Stages, each resumable from its own checkpoints (`DIR/ckpt/PHASE`), each
leaving its final params in `DIR/params/PHASE`:
  base  format warm-up SFT (stands in for a pretrained base SLM),
  sft   guided CoT distillation,
  rft   rejection-sampling fine-tuning rounds,
  rl    GRPO-family RL with MRPV and EAAI.

Initial params, in this precedence (first that applies):
  1. this run's own stage outputs (a finished stage is never redone; an
     unfinished one resumes from its latest checkpoint),
  2. `init_from`: another run's final params (e.g. a shared base),
  3. `model.pretrained`: imported HF / GGUF weights,
  4. random init from `model.tiny`.
The RL reference model is the params RL starts from (the SFT checkpoint in
ReaLM-R1, the base in ReaLM-Zero); which one is recorded in run.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from realm_jax.train import checkpoint, sft as distill, distributed, metrics as metrics_lib
from realm_jax import configs
from realm_jax.rl import corpus
from realm_jax.data import pipeline as data
from realm_jax import model
from realm_jax.train import sharding
from realm_jax.train import preemption, step as train_step
from realm_jax.rl import loop as rl_loop
from realm_jax.model import tokenizer as tokenizer_lib

PHASES = ("base", "sft", "rft", "rl")


@dataclasses.dataclass
class Context:
  cfg: configs.ExperimentConfig
  model_cfg: model.ModelConfig
  tokenizer: Any
  data: corpus.RunData
  chat: bool
  pretrained_params: Any = None
  mesh: Any = None


def load_run_info(workdir: str) -> dict:
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a realm-jax run directory?")
  with open(path) as f:
    return json.load(f)


def load_config(workdir: str, extra_overrides: list[str] | None = None) -> configs.ExperimentConfig:
  info = load_run_info(workdir)
  return configs.load_experiment(info["experiment"], info["overrides"] + list(extra_overrides or []))


# ---------------------------------------------------------------------------
# Params on disk.


def params_path(workdir: str, phase: str) -> str:
  return os.path.abspath(os.path.join(workdir, "params", phase))


def save_params(workdir: str, phase: str, params: Any) -> None:
  path = params_path(workdir, phase)
  if os.path.exists(path):
    shutil.rmtree(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)


def load_params(path: str, model_cfg: model.ModelConfig) -> Any:
  abstract = jax.eval_shape(lambda: model.init_params(model_cfg, jax.random.key(0)))
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path), abstract)


def _finished(workdir: str, phase: str) -> bool:
  return os.path.exists(params_path(workdir, phase))


# ---------------------------------------------------------------------------
# Setup.


def _tokenizer(cfg: configs.ExperimentConfig, workdir: str, run_data: corpus.RunData):
  spec = cfg.model
  if spec.tokenizer:
    return tokenizer_lib.load_tokenizer(spec.tokenizer)
  if spec.pretrained:
    from realm_jax.model import pretrained
    return pretrained.load_pretrained_tokenizer(_pretrained_path(spec.pretrained))
  path = os.path.join(workdir, "tokenizer.model")
  if cfg.init_from:  # the params' own tokenizer, kept beside them for runs that start from this one
    source = os.path.join(cfg.init_from, "tokenizer.model")
    if not os.path.exists(source):
      raise FileNotFoundError(f"init_from={cfg.init_from!r} has no tokenizer.model")
    if not os.path.exists(path) and jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      shutil.copyfile(source, path + ".tmp")
      os.replace(path + ".tmp", path)
    distributed.barrier("tokenizer")
    return tokenizer_lib.load_tokenizer(path)
  if not os.path.exists(path) and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    texts = list(corpus.tokenizer_corpus(run_data.train, cfg.rl.mrpv))
    tokenizer_lib.train_sentencepiece(texts, spec.tokenizer_vocab, out_path=path + ".tmp",
                                      model_type="bpe", hard_vocab_limit=False)
    os.replace(path + ".tmp", path)  # atomic: a crash never leaves half a tokenizer
  distributed.barrier("tokenizer")
  return tokenizer_lib.load_tokenizer(path)


def _pretrained_path(name: str) -> str:
  if name == "smollm2":
    from realm_jax.model import gguf as gguf_import
    return gguf_import.smollm2_gguf_path()
  return name


def prepare(cfg: configs.ExperimentConfig, workdir: str, mesh=None) -> Context:
  run_data = corpus.build_run_data(cfg.data)
  tok = _tokenizer(cfg, workdir, run_data)
  spec = cfg.model
  pretrained_params = None
  if spec.pretrained:
    from realm_jax.model import pretrained
    model_cfg, pretrained_params = pretrained.load_pretrained(_pretrained_path(spec.pretrained))
  else:
    model_cfg = dataclasses.replace(spec.tiny, vocab_size=tok.vocab_size)
  model_cfg = dataclasses.replace(model_cfg, dtype=spec.dtype, param_dtype=spec.param_dtype,
                                  remat=spec.remat, scan_layers=spec.scan_layers)
  if pretrained_params is not None:
    pretrained_params = model.cast_params(pretrained_params, spec.param_dtype)
  return Context(cfg=cfg, model_cfg=model_cfg, tokenizer=tok, data=run_data,
                 chat=bool(spec.pretrained), pretrained_params=pretrained_params,
                 mesh=mesh if mesh is not None else make_mesh(cfg.mesh))


def final_params_path(run_dir: str) -> str:
  """The params of the last finished stage of another run."""
  for phase in reversed(PHASES):
    if _finished(run_dir, phase):
      return params_path(run_dir, phase)
  raise FileNotFoundError(f"{run_dir!r} has no finished stage under {os.path.join(run_dir, 'params')}")


def initial_params(ctx: Context, workdir: str) -> tuple[Any, str]:
  """Params before this run's first stage, by the documented precedence."""
  cfg = ctx.cfg
  if cfg.init_from:
    path = final_params_path(cfg.init_from)
    return load_params(path, ctx.model_cfg), f"{cfg.init_from}:{os.path.basename(path)}"
  if ctx.pretrained_params is not None:
    return ctx.pretrained_params, f"pretrained:{cfg.model.pretrained}"
  return model.init_params(ctx.model_cfg, jax.random.key(cfg.seed)), "random"


def stage_params(ctx: Context, workdir: str) -> dict[str, Any]:
  """{'start': params RL (or the last stage) started from, 'final': the run's final params}."""
  done = [p for p in PHASES if _finished(workdir, p)]
  if not done:
    raise FileNotFoundError(f"{workdir} has no finished stage (params/{{{','.join(PHASES)}}})")
  out = {}
  if len(done) >= 2:
    out[f"start ({done[-2]})"] = load_params(params_path(workdir, done[-2]), ctx.model_cfg)
  elif ctx.cfg.init_from:
    out["start (init_from)"] = initial_params(ctx, workdir)[0]
  out[f"final ({done[-1]})"] = load_params(params_path(workdir, done[-1]), ctx.model_cfg)
  return out


# ---------------------------------------------------------------------------
# The run.


def make_mesh(sizes: tuple[int, int, int]):
  """The run's (data, fsdp, tensor) mesh; fixed sizes using fewer devices than
  present take the first ones (e.g. (1, 1, 1) on a multi-device host)."""
  cfg = sharding.MeshConfig(*sizes)
  n = jax.device_count() if -1 in cfg.sizes else int(np.prod(cfg.sizes))
  return sharding.make_mesh(cfg, jax.devices()[:n])


def _write_run_info(workdir: str, experiment: str, overrides: list[str]) -> None:
  path = os.path.join(workdir, "run.json")
  info = {"experiment": experiment, "overrides": list(overrides)}
  if os.path.exists(path):
    old = load_run_info(workdir)
    if (old["experiment"], old["overrides"]) != (experiment, list(overrides)):
      raise ValueError(f"{workdir} holds a run of {old['experiment']} {old['overrides']}; "
                       f"refusing to resume it as {experiment} {overrides}. Use another --workdir.")
    return
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(info, f, indent=2)


def run(experiment: str, workdir: str, overrides: list[str] | None = None) -> Any:
  """Runs (or resumes) every enabled stage of `experiment` in `workdir`."""
  distributed.maybe_initialize()
  overrides = list(overrides or [])
  cfg = configs.load_experiment(experiment, overrides)
  _write_run_info(workdir, experiment, overrides)
  mesh = make_mesh(cfg.mesh)
  with sharding.use_mesh(mesh):
    return _run(cfg, experiment, workdir, prepare(cfg, workdir, mesh))


def _run(cfg: configs.ExperimentConfig, experiment: str, workdir: str, ctx: Context) -> Any:
  sharding.check_divisibility(ctx.model_cfg, ctx.mesh, cfg.rl.batch_prompts)
  writer = metrics_lib.MetricsWriter(workdir)
  params, source = initial_params(ctx, workdir)
  ref_source = source
  print(f"[realm-jax] {experiment}: model {ctx.model_cfg.num_params / 1e6:.2f}M params, "
        f"init from {source}; {len(ctx.data.train)} train / {len(ctx.data.eval)} eval items")
  preemption.install()
  sft_ctx = distill.SFTContext(model_cfg=ctx.model_cfg, tokenizer=ctx.tokenizer, workdir=workdir,
                               writer=writer, buckets=cfg.data.sft_buckets, seed=cfg.seed,
                               checkpoint_every=cfg.checkpoint_every, mesh=ctx.mesh,
                               chat=ctx.chat)
  K = cfg.rl.mrpv.num_routes
  for phase, scfg in (("base", cfg.base), ("sft", cfg.sft)):
    if not scfg.steps or (phase == "base" and cfg.init_from):  # init_from replaces the warm-up
      continue
    if _finished(workdir, phase):
      params = load_params(params_path(workdir, phase), ctx.model_cfg)
      ref_source = f"{workdir}:{phase}"
      continue
    teacher, dropped = distill.verified_teacher_examples(ctx.data.train[:scfg.num_items])
    # One generator per phase: a resumed run that skips a finished phase draws the same pairs.
    rng = np.random.default_rng([cfg.seed, PHASES.index(phase)])
    pairs = corpus.sft_pairs(teacher, rng, cfg.rl.mrpv, scfg.route_share, K)
    writer.write(phase, 0, {"teacher_examples": len(teacher), "teacher_dropped": dropped})
    teacher = None
    if scfg.kd_alpha > 0:
      if not scfg.kd_teacher:
        raise ValueError(f"{phase}.kd_alpha={scfg.kd_alpha} needs {phase}.kd_teacher=RUN_DIR")
      teacher = load_params(final_params_path(scfg.kd_teacher), ctx.model_cfg)
    params = distill.run_sft(phase, sft_ctx, params, pairs, scfg, teacher)
    save_params(workdir, phase, params)
    ref_source = f"{workdir}:{phase}"
  if cfg.rft.rounds:
    if _finished(workdir, "rft"):
      params = load_params(params_path(workdir, "rft"), ctx.model_cfg)
    else:
      from realm_jax.rl import rft
      params = rft.run_rft(ctx, sft_ctx, params, cfg.rft)
      save_params(workdir, "rft", params)
    ref_source = f"{workdir}:rft"
  if cfg.rl.steps:
    if _finished(workdir, "rl"):
      params = load_params(params_path(workdir, "rl"), ctx.model_cfg)
    else:
      params = run_rl(ctx, workdir, writer, params, ref_source)
      save_params(workdir, "rl", params)
  writer.close()
  with open(os.path.join(workdir, "DONE"), "w") as f:
    f.write("done\n")
  return params


def run_rl(ctx: Context, workdir: str, writer: metrics_lib.MetricsWriter, params: Any,
           ref_source: str) -> Any:
  cfg = ctx.cfg
  # A copy: the train state's buffers are donated every step, the reference must survive.
  ref_params = jax.tree.map(lambda x: x.copy(), params)
  ref_params = jax.tree.map(sharding.put, ref_params, sharding.param_shardings(ctx.model_cfg, ctx.mesh))
  eaai_cfg = cfg.eaai_config()
  optimizer = train_step.make_optimizer(cfg.rl.lr, cfg.rl.warmup, cfg.rl.steps * cfg.rl.num_inner_updates
                                        * cfg.rl.num_minibatches, cfg.rl.weight_decay, cfg.rl.grad_clip)
  state, shardings = train_step.shard_state(train_step.init_state(params, optimizer), optimizer,
                                           ctx.model_cfg, ctx.mesh)
  # Every process draws the same global batch of prompts (text is tiny); the
  # device work (rollouts, updates) is what is sharded over the mesh.
  batches = data.rl_batches(ctx.data.train, cfg.rl.batch_prompts, cfg.seed, process_index=0,
                            process_count=1)
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, "rl"), keep_last=cfg.keep_checkpoints,
                                 best_metric="accuracy")
  start, clock, acc_ema = 0, 0, None
  latest = ckpt.latest_step()
  if latest is not None:
    state, extra = ckpt.restore(abstract_state=train_step.abstract_state(state, shardings))
    data.restore(batches, extra["data"])
    start, clock, acc_ema = int(extra["step"]), int(extra["eaai_clock"]), extra.get("acc_ema")
  rl_ctx = rl_loop.RLContext(model_cfg=ctx.model_cfg, tokenizer=ctx.tokenizer,
                             prompt_buckets=cfg.data.prompt_buckets, route_buckets=cfg.data.sft_buckets,
                             seed=cfg.seed, chat=ctx.chat)
  loop = rl_loop.RLLoop(rl_ctx, cfg.rl, eaai_cfg, optimizer, shardings)
  metrics_lib.report_memory("rl", loop.update, (train_step.abstract_state(state, shardings),
                                                 loop.abstract_batch(shardings)),
                            writer, cfg.max_memory_fraction, cfg.device_memory_bytes)
  bar = metrics_lib.progress(cfg.rl.steps, start, "rl")
  from realm_jax.rl import eaai
  try:
    for step in range(start, cfg.rl.steps):
      examples = next(batches)
      state, m = loop.step(state, ref_params, examples, step, clock)
      metrics_lib.check_finite(m, step, "rl", keys=("loss", "grad_norm", "reward"))
      writer.write("rl", step, m)
      # The gate reads a running (EMA) autonomous accuracy; none yet -> the clock advances.
      auto = m["accuracy_no_routes"]
      if not np.isnan(auto):
        acc_ema = auto if acc_ema is None else 0.9 * acc_ema + 0.1 * auto
      clock = int(eaai.advance_clock(clock, acc_ema, eaai_cfg))
      bar.update(1)
      bar.set_postfix(reward=f"{m['reward']:.2f}", acc=f"{m['accuracy']:.2f}",
                      p=f"{m['p_routes']:.2f}")
      last = step + 1 == cfg.rl.steps
      stop = preemption.requested()
      if last or stop or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
        distill.check_finite_params(state.params, step, "rl")
        ckpt.save(step + 1, state, extra={"data": data.get_state(batches), "step": step + 1,
                                          "eaai_clock": clock, "acc_ema": acc_ema,
                                          "reference": ref_source},
                  metrics={"accuracy": m["accuracy"]}, force=last or stop)
      if stop:
        raise preemption.Preempted(f"rl step {step + 1}")
  finally:  # waits for pending saves, on errors too: every save holds finite pre-failure state
    ckpt.close()
  bar.close()
  return state.params
