"""`realm-jax train EXPERIMENT --workdir DIR`: runs an experiment's stages.

Stages, each resumable from its own checkpoints (`DIR/ckpt/PHASE`), each
leaving its final params in `DIR/params/PHASE`:
  base  format warm-up SFT (stands in for a pretrained base SLM),
  sft   guided CoT distillation,
  rft   rejection-sampling fine-tuning rounds,
  rl    GRPO-family RL with MRPV and EAAI.

Life-cycle of `run`: validate the config; check and lock the workdir (one
live run per directory); refuse a resume whose resolved config differs from
the one recorded; set up (data, tokenizer, model); only then record the run
(`run.json`, written atomically, with the resolved config); then the stages.
SIGTERM / SIGINT stop after the step in flight, saved (see `train.loop`).

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
import time
from typing import Any

import jax
import numpy as np

from realm_jax import configs, errors, model
from realm_jax.cli.generate import model_path
from realm_jax.cli.run_files import (PHASES, final_params_path, finished, finished_phases,
                                     load_params, load_run_info, params_path, run_final_params,
                                     save_params)
from realm_jax.evaluation import accuracy
from realm_jax.model import lora, pretrained, tokenizer as tokenizer_lib
from realm_jax.rl import corpus, rft, stage as rl_stage
from realm_jax.train import distributed, loop, metrics as metrics_lib, preemption
from realm_jax.train import sft as distill
from realm_jax.train import sharding, workdir as workdir_lib

@dataclasses.dataclass
class Context:
  cfg: configs.ExperimentConfig
  model_cfg: model.ModelConfig
  tokenizer: Any
  data: corpus.RunData
  chat: bool
  pretrained_params: Any = None
  mesh: Any = None


def load_config(workdir: str, extra_overrides: list[str] | None = None) -> configs.ExperimentConfig:
  info = load_run_info(workdir)
  return configs.load_experiment(info["experiment"], info["overrides"] + list(extra_overrides or []))


def config_record(cfg: configs.ExperimentConfig) -> dict:
  """The resolved config as JSON values (the EAAI schedule as the run uses it, its defaults
  filled in from rl.steps and rl.mrpv.num_routes): what run.json records and a resume must
  match."""
  record = dataclasses.asdict(cfg)
  record["rl"]["eaai"] = dataclasses.asdict(cfg.eaai_config())
  record["record_version"] = 2
  return json.loads(json.dumps(record, default=str))


def _upgraded(record: dict) -> dict:
  """A record written before version 2 holds rl.eaai as set; the runs of then always used
  total_steps = max(rl.steps, 1) and max_routes = rl.mrpv.num_routes."""
  if record.get("record_version", 1) >= 2 or "rl" not in record:
    return record
  rl = record["rl"]
  eaai = dict(rl.get("eaai", {}), total_steps=max(rl.get("steps", 0), 1),
              max_routes=rl.get("mrpv", {}).get("num_routes"))
  return dict(record, rl=dict(rl, eaai=eaai), record_version=2)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """What differs between two config records. Only fields both records hold are compared: a
  field added to realm_jax after a run was recorded (or one since removed) is not a
  difference, so upgrading realm_jax does not strand a run."""
  if isinstance(old, dict) and isinstance(new, dict):
    return [d for k in sorted(old.keys() & new.keys())
            for d in _differences(old[k], new[k], f"{prefix}{k}.")]
  return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


# ---------------------------------------------------------------------------
# Setup.


def _run_tokenizer(cfg: configs.ExperimentConfig, workdir: str, run_data: corpus.RunData,
                   create: bool):
  """The run's own tokenizer (workdir/tokenizer.model): copied from `init_from` or trained on
  the run's data when missing and `create`; written atomically by process 0."""
  path = os.path.join(workdir, "tokenizer.model")
  missing = create and not os.path.exists(path)
  # Every process looks before process 0 may write it, so all of them take the same branch
  # (a late process would otherwise find the new file and skip the barrier below).
  distributed.barrier("tokenizer-looked")
  if not missing:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: {workdir} holds no trained tokenizer")
    return tokenizer_lib.load_tokenizer(path)
  if jax.process_index() == 0:
    if cfg.init_from:  # the params' own tokenizer, kept beside them for runs that start from this one
      source = os.path.join(cfg.init_from, "tokenizer.model")
      if not os.path.exists(source):
        raise FileNotFoundError(f"init_from={cfg.init_from!r} has no tokenizer.model")
      shutil.copyfile(source, path + ".tmp")
    else:
      texts = list(corpus.tokenizer_corpus(run_data.train, cfg.rl.mrpv))
      tokenizer_lib.train_sentencepiece(texts, cfg.model.tokenizer_vocab, out_path=path + ".tmp",
                                        model_type="bpe", hard_vocab_limit=False)
    os.replace(path + ".tmp", path)  # atomic: a crash never leaves half a tokenizer
  distributed.barrier("tokenizer")
  return tokenizer_lib.load_tokenizer(path)


def _tokenizer(cfg: configs.ExperimentConfig, workdir: str, run_data: corpus.RunData,
               create: bool):
  if cfg.model.tokenizer:
    return tokenizer_lib.load_tokenizer(cfg.model.tokenizer)
  if cfg.model.pretrained:
    return pretrained.load_pretrained_tokenizer(model_path(cfg.model.pretrained))
  return _run_tokenizer(cfg, workdir, run_data, create)


def prepare(cfg: configs.ExperimentConfig, workdir: str, mesh=None, create: bool = True) -> Context:
  """Data, tokenizer and model of a run. `create=False` (eval) writes nothing into `workdir`."""
  run_data = corpus.build_run_data(cfg.data)
  tok = _tokenizer(cfg, workdir, run_data, create)
  spec = cfg.model
  pretrained_params = None
  if spec.pretrained:
    model_cfg, pretrained_params = pretrained.load_pretrained(model_path(spec.pretrained))
  else:
    model_cfg = dataclasses.replace(spec.tiny, vocab_size=tok.vocab_size)
  model_cfg = dataclasses.replace(model_cfg, **spec.model_dtypes(), remat=spec.remat,
                                  scan_layers=spec.scan_layers, lora=spec.lora())
  if pretrained_params is not None:
    pretrained_params = model.cast_params(pretrained_params, model_cfg.param_dtype)
  return Context(cfg=cfg, model_cfg=model_cfg, tokenizer=tok, data=run_data,
                 chat=bool(spec.pretrained), pretrained_params=pretrained_params,
                 mesh=mesh if mesh is not None else make_mesh(cfg.mesh))


def base_params(ctx: Context) -> tuple[Any, str]:
  """(params, source) before this run's first stage, without LoRA adapters, by the
  documented precedence."""
  cfg = ctx.cfg
  if cfg.init_from:
    path = final_params_path(cfg.init_from)
    return run_final_params(ctx, cfg.init_from), f"{cfg.init_from}:{os.path.basename(path)}"
  if ctx.pretrained_params is not None:
    return ctx.pretrained_params, f"pretrained:{cfg.model.pretrained}"
  params = model.init_params(ctx.model_cfg, jax.random.key(cfg.seed))
  return (lora.split(params)[1] or params), "random"


def initial_params(ctx: Context, workdir: str) -> tuple[Any, str]:
  """Params before this run's first stage: `base_params`, with fresh adapters under LoRA."""
  params, source = base_params(ctx)
  if ctx.model_cfg.lora is not None:
    params = lora.add_adapters(params, ctx.model_cfg, jax.random.key(ctx.cfg.seed + 1))
  return params, source


def run_params(ctx: Context, path: str, base: Any = None) -> Any:
  """A stage's saved params of this run's model (`base`: the LoRA base, else built here)."""
  if ctx.model_cfg.lora is not None and base is None:
    base = base_params(ctx)[0]
  return load_params(path, ctx.model_cfg, base)


def stage_params(ctx: Context, workdir: str) -> dict[str, Any]:
  """{'start': params RL (or the last stage) started from, 'final': the run's final params}."""
  done = finished_phases(workdir)
  if not done:
    raise FileNotFoundError(f"{workdir} has no finished stage (params/{{{','.join(PHASES)}}})")
  out = {}
  base = base_params(ctx)[0] if ctx.model_cfg.lora is not None else None
  if len(done) >= 2:
    out[f"start ({done[-2]})"] = run_params(ctx, params_path(workdir, done[-2]), base)
  elif ctx.cfg.init_from:
    out["start (init_from)"] = base if base is not None else base_params(ctx)[0]
  elif ctx.pretrained_params is not None:  # one stage on a pretrained model: the model as loaded
    out["start (pretrained)"] = ctx.pretrained_params
  out[f"final ({done[-1]})"] = run_params(ctx, params_path(workdir, done[-1]), base)
  return out


# ---------------------------------------------------------------------------
# The run.


def make_mesh(sizes: tuple[int, int, int]):
  """The run's (data, fsdp, tensor) mesh; fixed sizes using fewer devices than
  present take the first ones (e.g. (1, 1, 1) on a multi-device host)."""
  cfg = sharding.MeshConfig(*sizes)
  n = jax.device_count() if -1 in cfg.sizes else int(np.prod(cfg.sizes))
  return sharding.make_mesh(cfg, jax.devices()[:n])


def _check_resume(workdir: str, experiment: str, cfg: configs.ExperimentConfig) -> None:
  """Refuses to resume a recorded run under a different resolved config (names what differs)."""
  if not os.path.exists(os.path.join(workdir, "run.json")):
    return
  old = load_run_info(workdir)
  recorded = old.get("config")
  if recorded is None:  # recorded without a resolved config: resolve what it recorded
    recorded = config_record(configs.load_experiment(old["experiment"], old["overrides"]))
  diff = _differences(_upgraded(recorded), config_record(cfg))
  if diff:
    raise errors.ConfigError(
        f"{workdir} holds a run of {old['experiment']} whose config differs "
        f"({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''}); refusing to "
        f"resume it as {experiment}. Use another --workdir.")


def _record_run(workdir: str, experiment: str, overrides: list[str],
                cfg: configs.ExperimentConfig) -> None:
  if jax.process_index() == 0 and not os.path.exists(os.path.join(workdir, "run.json")):
    workdir_lib.write_json(os.path.join(workdir, "run.json"),
                           {"experiment": experiment, "overrides": list(overrides),
                            "config": config_record(cfg)})


def run(experiment: str, workdir: str, overrides: list[str] | None = None) -> Any:
  """Runs (or resumes) every enabled stage of `experiment` in `workdir`."""
  distributed.maybe_initialize()
  overrides = list(overrides or [])
  cfg = configs.load_experiment(experiment, overrides)
  created = workdir_lib.ensure(workdir)
  # A set-up that fails in a directory this run created takes the directory (then holding only
  # the lock file) with it.
  with workdir_lib.locked(workdir, remove_unused=created), preemption.handling():
    _check_resume(workdir, experiment, cfg)
    mesh = make_mesh(cfg.mesh)
    with sharding.use_mesh(mesh):
      ctx = prepare(cfg, workdir, mesh)
      sharding.check_divisibility(ctx.model_cfg, ctx.mesh, cfg.rl.batch_prompts)
      _record_run(workdir, experiment, overrides, cfg)
      return _run(cfg, experiment, workdir, ctx)


def _supervised(phase: str, scfg, ctx: Context, sft_ctx: distill.SFTContext, params: Any) -> Any:
  """Base warm-up or guided distillation: verified teacher pairs through `run_sft`."""
  cfg = ctx.cfg
  teacher, dropped = distill.verified_teacher_examples(ctx.data.train[:scfg.num_items])
  # One generator per phase: a resumed run that skips a finished phase draws the same pairs.
  rng = np.random.default_rng([cfg.seed, PHASES.index(phase)])
  routed = None
  if scfg.route_level is not None:  # routed items from another level's training questions
    level = corpus.build_run_data(dataclasses.replace(cfg.data, difficulty=scfg.route_level))
    routed = distill.verified_teacher_examples(level.train[:scfg.num_items])[0]
  pairs = corpus.sft_pairs(teacher, rng, cfg.rl.mrpv, scfg.route_share, cfg.rl.mrpv.num_routes,
                           routed)
  sft_ctx.writer.write_once(f"{phase}_teacher", 0, {"teacher_examples": len(teacher),
                                                    "teacher_dropped": dropped})
  teacher = None
  if scfg.kd_alpha > 0:
    if not scfg.kd_teacher:
      raise ValueError(f"{phase}.kd_alpha={scfg.kd_alpha} needs {phase}.kd_teacher=RUN_DIR")
    teacher = run_final_params(ctx, scfg.kd_teacher)
  return distill.run_sft(phase, sft_ctx, params, pairs, scfg, teacher,
                         _validator(ctx, phase, scfg.eval_every))


def _validator(ctx: Context, phase: str, eval_every: int):
  """A stage's `validate(params)`: greedy accuracy without routes on the validation slice,
  generated as `realm-jax eval` does (eval.max_new_tokens, eval.batch_size); None when the
  stage does not validate (eval_every=0, or no validation slice: data.num_valid=0)."""
  if not eval_every:
    return None
  cfg = ctx.cfg
  if not ctx.data.valid:
    print(f"[realm-jax] {phase}: {phase}.eval_every={eval_every} but the validation slice is "
          f"empty (data.num_valid={cfg.data.num_valid}): the stage runs without validating")
    return None
  eval_cfg = dataclasses.replace(cfg.eval, k=1)

  def validate(params):
    t0 = time.perf_counter()
    res = accuracy.evaluate_params(params, ctx.model_cfg, ctx.tokenizer, ctx.data.valid, eval_cfg,
                                   cfg.rl.mrpv, with_routes=False, seed=cfg.seed, chat=ctx.chat)
    return {loop.VALID_METRIC: res["accuracy"], "time_valid": time.perf_counter() - t0}
  return validate


def _run(cfg: configs.ExperimentConfig, experiment: str, workdir: str, ctx: Context) -> Any:
  writer = metrics_lib.MetricsWriter(workdir)
  params, source = initial_params(ctx, workdir)
  base = lora.split(params)[1]  # the frozen base under LoRA, else None
  reference = source
  print(f"[realm-jax] {experiment}: model {ctx.model_cfg.num_params / 1e6:.2f}M params, "
        f"init from {source}; {len(ctx.data.train)} train / {len(ctx.data.valid)} validation / "
        f"{len(ctx.data.eval)} eval items")
  sft_ctx = distill.SFTContext(model_cfg=ctx.model_cfg, tokenizer=ctx.tokenizer, workdir=workdir,
                               writer=writer, buckets=cfg.data.sft_buckets, seed=cfg.seed,
                               checkpoint_every=cfg.checkpoint_every,
                               keep_checkpoints=cfg.keep_checkpoints, mesh=ctx.mesh,
                               chat=ctx.chat, memory_fraction=cfg.max_memory_fraction,
                               device_memory=cfg.device_memory_bytes)
  stages = (("base", cfg.base.steps and not cfg.init_from,  # init_from replaces the warm-up
             lambda p: _supervised("base", cfg.base, ctx, sft_ctx, p)),
            ("sft", cfg.sft.steps, lambda p: _supervised("sft", cfg.sft, ctx, sft_ctx, p)),
            ("rft", cfg.rft.rounds, lambda p: rft.run_rft(ctx, sft_ctx, p, cfg.rft)),
            ("rl", cfg.rl.steps, lambda p: rl_stage.run_rl(
                ctx, workdir, writer, p, reference, _validator(ctx, "rl", cfg.rl.eval_every))))
  try:
    for phase, enabled, train_stage in stages:
      if not enabled:
        continue
      if finished(workdir, phase):  # a finished stage is never redone
        params = load_params(params_path(workdir, phase), ctx.model_cfg, base)
      else:
        params = train_stage(params)
        save_params(workdir, phase, params)
      reference = f"{workdir}:{phase}"
  finally:
    writer.close()
  workdir_lib.write_json(os.path.join(workdir, "DONE"), {"experiment": experiment})
  return params
