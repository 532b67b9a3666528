"""A run directory's files: its record (`run.json`) and each finished stage's params
(`params/PHASE`); the params of another run as the start of this one (`init_from`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from realm_jax import configs, errors, model
from realm_jax.model import lora

PHASES = ("base", "sft", "rft", "rl")


def load_run_info(workdir: str) -> dict:
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a realm-jax run directory?")
  with open(path) as f:
    return json.load(f)


def params_path(workdir: str, phase: str) -> str:
  return os.path.abspath(os.path.join(workdir, "params", phase))


def save_params(workdir: str, phase: str, params: Any) -> None:
  """A finished stage's trainable params (with LoRA the adapters only: the base is the
  run's input, rebuilt by `base_params`)."""
  path = params_path(workdir, phase)
  if os.path.exists(path):
    shutil.rmtree(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, lora.split(params)[0])


def load_params(path: str, model_cfg: model.ModelConfig, base: Any = None) -> Any:
  """Params saved by `save_params`. A LoRA config (`model_cfg.lora`) reads adapters and
  merges them into `base` (required then); otherwise the whole model."""
  abstract = jax.eval_shape(lambda: model.init_params(model_cfg, jax.random.key(0)))
  adapters = model_cfg.lora is not None
  if adapters and base is None:
    raise ValueError(f"{path}: LoRA adapters need their base params")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      saved = ckptr.restore(os.path.abspath(path), lora.split(abstract)[0])
    except (ValueError, KeyError) as e:
      what = "LoRA adapters" if adapters else "a whole model"
      raise errors.UserError(f"{path}: does not hold {what} of this run's model "
                             f"(model.lora_rank={getattr(model_cfg.lora, 'rank', 0)}): "
                             f"{str(e).splitlines()[0][:200]}") from None
  return lora.merge(saved, base) if adapters else saved


def finished(workdir: str, phase: str) -> bool:
  return os.path.exists(params_path(workdir, phase))


def finished_phases(workdir: str) -> list[str]:
  return [p for p in PHASES if finished(workdir, p)]


def final_params_path(run_dir: str) -> str:
  """The params of the last finished stage of another run."""
  for phase in reversed(PHASES):
    if finished(run_dir, phase):
      return params_path(run_dir, phase)
  raise FileNotFoundError(f"{run_dir!r} has no finished stage under {os.path.join(run_dir, 'params')}")


def _config_record(run_dir: str) -> dict:
  """A run's resolved config as run.json records it (resolved again from its experiment and
  overrides for a record without one); {} for a directory of params only."""
  if not os.path.exists(os.path.join(run_dir, "run.json")):
    return {}
  info = load_run_info(run_dir)
  if "config" in info:
    return info["config"]
  return dataclasses.asdict(configs.load_experiment(info["experiment"], info["overrides"]))


def run_final_params(ctx, run_dir: str) -> Any:
  """Another run's final params as a whole model of the shape of `ctx` (a `train.Context`):
  a LoRA run's adapters folded into its own base (its `init_from`, recursively; the same
  pretrained model; or its random init), as its run.json records them."""
  path = final_params_path(run_dir)
  plain = dataclasses.replace(ctx.model_cfg, lora=None)
  rec = _config_record(run_dir)
  spec = rec.get("model", {})
  if not spec.get("lora_rank"):
    return load_params(path, plain)
  adapters = lora.LoraConfig(rank=spec["lora_rank"], alpha=spec["lora_alpha"],
                             targets=tuple(spec["lora_targets"]))
  with_adapters = dataclasses.replace(plain, lora=adapters)
  if rec.get("init_from"):
    base = run_final_params(ctx, rec["init_from"])
  elif spec.get("pretrained") != ctx.cfg.model.pretrained:
    raise errors.UserError(f"init_from={run_dir}: a LoRA run of model.pretrained="
                           f"{spec.get('pretrained')!r}; this run's is {ctx.cfg.model.pretrained!r}")
  elif spec.get("pretrained"):
    base = ctx.pretrained_params
  else:  # its random init, as `train.base_params` drew it
    base = lora.split(model.init_params(with_adapters, jax.random.key(rec["seed"])))[1]
  return lora.merged(load_params(path, with_adapters, base), adapters)
