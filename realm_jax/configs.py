"""Typed experiment configs, dotted overrides, and experiment loading.

An experiment is `experiments/NAME.py` with `get_config() -> ExperimentConfig`.
Overrides are `key.sub=value` strings applied with type coercion against the
dataclass field types, e.g. `rl.steps=20 rl.eaai.shape=cosine model.tiny.num_layers=2`.
All overrides are applied first and the result is checked once, so their order
never matters (`rl.microbatches=3 rl.batch_prompts=6` == the reverse). Every
config failure raises `ConfigError` (a `ValueError`) with a message that names
the key and what to change.

Stages run in order when enabled: base warm-up SFT (`sft` with `stage=base`),
guided distillation SFT (`sft`), rejection-sampling fine-tuning (`rft`),
RL (`rl`). Each concept's own config lives beside its code (`model.spec.ModelSpec`,
`data.config.DataConfig`, `train.config.SFTConfig`, `rl.config.RLConfig` and
`RFTConfig`, `rl.losses.LossConfig`, `rl.mrpv.MRPVConfig`, `rl.eaai.EAAIConfig`,
`evaluation.accuracy.EvalConfig`); this module only composes them
(and re-exports them, so an experiment file imports one module).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import types
import typing
from typing import Any

from realm_jax.data.config import DataConfig
from realm_jax.errors import ConfigError
from realm_jax.evaluation.accuracy import EvalConfig
from realm_jax.model.spec import TINY_MODEL, ModelSpec
from realm_jax.rl import eaai
from realm_jax.rl.config import RFTConfig, RLConfig
from realm_jax.train.config import SFTConfig

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "ExperimentConfig", "ModelSpec", "RFTConfig",
           "RLConfig", "SFTConfig", "TINY_MODEL", "apply_overrides", "experiment_names",
           "experiment_summaries", "load_experiment"]


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
  max_memory_fraction: float = 0.9
  device_memory_bytes: int | None = None  # None: ask the device (CPU: the host's memory)

  def __post_init__(self):
    if len(self.mesh) != 3 or any(s == 0 or s < -1 for s in self.mesh) or self.mesh.count(-1) > 1:
      raise ValueError(
          f"mesh={','.join(map(str, self.mesh))}: give three sizes data,fsdp,tensor, each >= 1 "
          f"or -1 (all remaining devices, at most one axis), e.g. mesh=-1,1,1")
    for name, low in (("checkpoint_every", 0), ("keep_checkpoints", 1)):
      if getattr(self, name) < low:
        raise ValueError(f"{name}={getattr(self, name)}: must be >= {low}")
    if not 0.0 < self.max_memory_fraction <= 1.0:
      raise ValueError(f"max_memory_fraction={self.max_memory_fraction}: must be in (0, 1]")
    if self.device_memory_bytes is not None and self.device_memory_bytes <= 0:
      raise ValueError(f"device_memory_bytes={self.device_memory_bytes}: must be > 0 (or none)")
    # Built-in domains write `positives_per_question` correct routes; other sources one.
    specs = [s.strip() for s in self.data.source.split(",") if s.strip()]
    positives = (self.data.positives_per_question
                 if specs and all(s.startswith("domain:") for s in specs) else 1)
    pool = positives + self.data.negatives_per_question
    if self.rl.routes != "never" and self.rl.mrpv.num_routes > pool:
      raise ValueError(
          f"rl.mrpv.num_routes={self.rl.mrpv.num_routes} exceeds the route pool of each question "
          f"({positives} positive + data.negatives_per_question={self.data.negatives_per_question});"
          f" lower rl.mrpv.num_routes or raise data.negatives_per_question")

  def eaai_config(self) -> eaai.EAAIConfig:
    """`rl.eaai` with the defaults it leaves to the run filled in (`eaai.FromRun`):
    total_steps = rl.steps, max_routes = rl.mrpv.num_routes. Values set explicitly
    (`rl.eaai.total_steps=200`) win; more than num_routes routes are never shown."""
    e, fill = self.rl.eaai, {}
    if isinstance(e.total_steps, eaai.FromRun):
      fill["total_steps"] = max(self.rl.steps, 1)
    if isinstance(e.max_routes, eaai.FromRun):
      fill["max_routes"] = self.rl.mrpv.num_routes
    return dataclasses.replace(e, **fill)


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
    raise ConfigError(f"override {key}={value!r}: expected a boolean (true/false)")
  if typ in (int, float, str):
    try:
      return typ(value)
    except ValueError:
      raise ConfigError(f"override {key}={value!r}: expected {typ.__name__}") from None
  if origin is tuple:
    parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
    inner = args[0] if args else str
    return tuple(_coerce(p.strip(), inner, key) for p in parts)
  raise ConfigError(f"override {key}: fields of type {typ} cannot be set from the command line")


@dataclasses.dataclass(frozen=True)
class _Leaf:
  key: str  # the full dotted key, for messages
  value: Any


def apply_overrides(cfg: Any, overrides: list[str] | dict[str, Any]) -> Any:
  """A copy of nested dataclass `cfg` with dotted overrides applied, then checked once.

  Every override is applied before any check runs, so their order never
  matters: the keys are grouped into a tree by path and each changed dataclass
  is rebuilt once with all its changes (one `__post_init__` with every change
  applied, innermost first). A key given twice keeps its last value. Any
  failure is a `ConfigError`.
  """
  items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
  tree: dict[str, Any] = {}
  for key, value in items:
    *sections, name = key.split(".")
    node = tree
    for i, part in enumerate(sections):
      node = node.setdefault(part, {})
      if isinstance(node, _Leaf):
        raise ConfigError(f"override {key}: {'.'.join(sections[:i + 1])} is set to a value by "
                          f"override {node.key}; it is not a config section")
    if isinstance(node.get(name), dict):
      raise ConfigError(f"override {key}: {key} is a config section; set its fields, e.g. "
                        f"{_first_key(node[name])}=...")
    node[name] = _Leaf(key, value)
  return _rebuild(cfg, tree, "")


def _split(override: str) -> tuple[str, str]:
  if "=" not in override:
    raise ConfigError(f"override {override!r} must look like key.sub=value")
  k, v = override.split("=", 1)
  return k.strip(), v.strip()


def _first_key(node: dict[str, Any]) -> str:
  value = next(iter(node.values()))
  return value.key if isinstance(value, _Leaf) else _first_key(value)


def _rebuild(obj: Any, node: dict[str, Any], path: str) -> Any:
  """`obj` rebuilt once with every change of `node` ({field: _Leaf | subtree})."""
  hints = typing.get_type_hints(type(obj))
  names = [f.name for f in dataclasses.fields(obj)]
  changes = {}
  for name, sub in node.items():
    where = f"{path}{name}"
    if name not in names:
      raise ConfigError(f"override {_first_key({name: sub})}: unknown field {name!r} of "
                        f"{type(obj).__name__}; valid: {', '.join(names)}")
    if isinstance(sub, _Leaf):
      value = sub.value
      changes[name] = _coerce(value, hints[name], sub.key) if isinstance(value, str) else value
    elif dataclasses.is_dataclass(getattr(obj, name)):
      changes[name] = _rebuild(getattr(obj, name), sub, where + ".")
    elif isinstance(getattr(obj, name), dict):  # a mapping: rl.reward_weights.answer=0.5
      typ = (typing.get_args(hints[name]) or (str, str))[1]
      changes[name] = {**getattr(obj, name), **{
          k: _coerce(v.value, typ, v.key) if isinstance(v.value, str) else v.value
          for k, v in sub.items() if isinstance(v, _Leaf)}}
    else:
      raise ConfigError(f"override {_first_key(sub)}: {where} is a value, not a config section")
  try:
    return dataclasses.replace(obj, **changes)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from e


def _experiments_folder() -> str | None:
  spec = importlib.util.find_spec("experiments")
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def experiment_names() -> list[str]:
  """The modules of experiments/ that define `get_config` (helpers and scripts beside them,
  such as common.py or reproduce.py, do not)."""
  folder = _experiments_folder()
  if folder is None:
    return []

  def defines_config(f: str) -> bool:
    with open(os.path.join(folder, f), encoding="utf-8") as fh:
      return "\ndef get_config(" in fh.read()
  return sorted(f[:-3] for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_") and defines_config(f))


def experiment_summaries() -> dict[str, str]:
  """{name: first line of its module docstring}, read without importing the experiments."""
  folder = _experiments_folder()
  out = {}
  for name in experiment_names():
    with open(os.path.join(folder, f"{name}.py"), encoding="utf-8") as f:
      doc = ast.get_docstring(ast.parse(f.read())) or ""
    out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
  return out


def load_experiment(name: str, overrides: list[str] | dict | None = None) -> ExperimentConfig:
  """`name` is an experiment module under experiments/ or a path to a .py file.

  Config checks that fail (in `get_config()` or after the overrides) raise `ConfigError`.
  """
  if name.endswith(".py"):
    spec = importlib.util.spec_from_file_location("realm_experiment", name)
    if spec is None or not os.path.exists(name):
      raise FileNotFoundError(f"experiment file {name} not found; give the path of a .py file "
                              f"defining get_config(), or a name: {', '.join(experiment_names())}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  else:
    try:
      module = importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError as e:
      if e.name and e.name.startswith("experiments"):
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(experiment_names())}"
                          ) from None
      raise
  try:
    cfg = module.get_config()
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f"experiment {name}: get_config(): {e}") from e
  return apply_overrides(cfg, overrides or [])
