"""Typed experiment configs, dotted overrides, and experiment loading.

An experiment is `experiments/NAME.py` with `get_config() -> ExperimentConfig`.
Overrides are `key.sub=value` strings applied with type coercion against the
dataclass field types, e.g. `rl.steps=20 rl.eaai.shape=cosine model.tiny.num_layers=2`.

Stages run in order when enabled: base warm-up SFT (`sft` with `stage=base`),
guided distillation SFT (`sft`), rejection-sampling fine-tuning (`rft`),
RL (`rl`). Each concept's own config lives beside its code (`model.spec.ModelSpec`,
`data.config.DataConfig`, `train.config.SFTConfig`, `rl.config.RLConfig` and
`RFTConfig`, `rl.losses.LossConfig`, `rl.mrpv.MRPVConfig`, `rl.eaai.EAAIConfig`,
`evaluation.accuracy.EvalConfig`); this module only composes them
(and re-exports them, so an experiment file imports one module).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import types
import typing
from typing import Any

from realm_jax.data.config import DataConfig
from realm_jax.evaluation.accuracy import EvalConfig
from realm_jax.model.spec import TINY_MODEL, ModelSpec
from realm_jax.rl import eaai
from realm_jax.rl.config import RFTConfig, RLConfig
from realm_jax.train.config import SFTConfig

__all__ = ["DataConfig", "EvalConfig", "ExperimentConfig", "ModelSpec", "RFTConfig", "RLConfig",
           "SFTConfig", "TINY_MODEL", "apply_overrides", "experiment_names", "load_experiment"]


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  name: str = "experiment"
  seed: int = 0
  model: ModelSpec = ModelSpec()
  data: DataConfig = DataConfig()
  base: SFTConfig = SFTConfig()  # format warm-up standing in for a pretrained base
  sft: SFTConfig = SFTConfig()
  rft: RFTConfig = RFTConfig()
  rl: RLConfig = RLConfig()
  eval: EvalConfig = EvalConfig()
  init_from: str | None = None  # another run's workdir: start from its final params
  mesh: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor); -1 = all remaining devices
  checkpoint_every: int = 50
  keep_checkpoints: int = 2
  log_every: int = 1
  max_memory_fraction: float = 0.9
  device_memory_bytes: int | None = None  # None: ask the device (CPUs report none: no check)

  def __post_init__(self):
    pool = 1 + self.data.negatives_per_question
    if self.rl.routes != "never" and self.rl.mrpv.num_routes > pool:
      raise ValueError(
          f"rl.mrpv.num_routes={self.rl.mrpv.num_routes} exceeds the route pool of each question "
          f"(1 positive + data.negatives_per_question={self.data.negatives_per_question}); lower "
          f"rl.mrpv.num_routes or raise data.negatives_per_question")

  def eaai_config(self) -> eaai.EAAIConfig:
    """The EAAI schedule over this run's RL horizon (total_steps = rl.steps, max_routes = K)."""
    return dataclasses.replace(self.rl.eaai, total_steps=max(self.rl.steps, 1),
                               max_routes=self.rl.mrpv.num_routes)


# ---------------------------------------------------------------------------
# Overrides.


def _coerce(value: str, typ: Any, key: str) -> Any:
  origin = typing.get_origin(typ)
  args = typing.get_args(typ)
  if origin in (typing.Union, types.UnionType):
    if value.lower() in ("none", "null"):
      return None
    non_none = [a for a in args if a is not type(None)]
    return _coerce(value, non_none[0], key)
  if typ is bool:
    if value.lower() in ("1", "true", "yes", "on"):
      return True
    if value.lower() in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"override {key}={value!r}: expected a boolean")
  if typ in (int, float, str):
    try:
      return typ(value)
    except ValueError:
      raise ValueError(f"override {key}={value!r}: expected {typ.__name__}") from None
  if origin is tuple:
    parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
    inner = args[0] if args else str
    return tuple(_coerce(p.strip(), inner, key) for p in parts)
  raise ValueError(f"override {key}: fields of type {typ} cannot be set from the command line")


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
  """Returns a copy of nested dataclass `cfg` with dotted overrides applied."""
  items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
  for key, value in items:
    cfg = _set(cfg, key.split("."), value, key)
  return cfg


def _split(override: str) -> tuple[str, str]:
  if "=" not in override:
    raise ValueError(f"override {override!r} must look like key.sub=value")
  k, v = override.split("=", 1)
  return k.strip(), v.strip()


def _set(obj: Any, path: list[str], value: Any, full: str) -> Any:
  if not dataclasses.is_dataclass(obj):
    raise ValueError(f"override {full}: {path[0]!r} is not a config section")
  hints = typing.get_type_hints(type(obj))
  names = [f.name for f in dataclasses.fields(obj)]
  if path[0] not in names:
    raise ValueError(f"override {full}: unknown field {path[0]!r} of {type(obj).__name__}; "
                     f"valid: {', '.join(names)}")
  if len(path) == 1:
    if isinstance(value, str):
      value = _coerce(value, hints[path[0]], full)
    return dataclasses.replace(obj, **{path[0]: value})
  child = _set(getattr(obj, path[0]), path[1:], value, full)
  return dataclasses.replace(obj, **{path[0]: child})


def experiment_names() -> list[str]:
  spec = importlib.util.find_spec("experiments")
  if spec is None or not spec.submodule_search_locations:
    return []
  folder = list(spec.submodule_search_locations)[0]
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_") and f not in ("common.py", "reproduce.py"))


def load_experiment(name: str, overrides: list[str] | dict | None = None) -> ExperimentConfig:
  """`name` is an experiment module under experiments/ or a path to a .py file."""
  if name.endswith(".py"):
    spec = importlib.util.spec_from_file_location("realm_experiment", name)
    if spec is None or not os.path.exists(name):
      raise FileNotFoundError(f"experiment file {name} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError as e:
      if e.name and e.name.startswith("experiments"):
        raise ValueError(f"unknown experiment {name!r}; valid: {', '.join(experiment_names())}") from None
      raise
  cfg = module.get_config()
  return apply_overrides(cfg, overrides or [])
