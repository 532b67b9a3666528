"""Typed experiment configs, dotted overrides, and experiment loading.

An experiment is `experiments/NAME.py` with `get_config() -> ExperimentConfig`.
Overrides are `key.sub=value` strings applied with type coercion against the
dataclass field types, e.g. `rl.steps=20 rl.eaai.shape=cosine model.tiny.num_layers=2`.

Stages run in order when enabled: base warm-up SFT (`sft` with `stage=base`),
guided distillation SFT (`sft`), rejection-sampling fine-tuning (`rft`),
RL (`rl`). Each concept's own config lives with it (losses.LossConfig,
mrpv.MRPVConfig, eaai.EAAIConfig, sampling.SamplingConfig,
sharding.MeshConfig); this module only composes them.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import types
import typing
from typing import Any

from realm_jax import eaai, losses, mrpv
from realm_jax.model import ModelConfig

TINY_MODEL = ModelConfig(vocab_size=512, num_layers=4, d_model=128, num_heads=4,
                         num_kv_heads=2, head_dim=32, mlp_dim=384, rope_theta=10000.0,
                         tie_embeddings=True, max_seq_len=1024)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Which model: `pretrained` (HF folder, .gguf, or 'smollm2') or `tiny` from scratch.

  tokenizer: a tokenizer file/folder; None trains a SentencePiece model of
  `tokenizer_vocab` pieces (digits split) on the run's corpus, or uses the
  pretrained model's own.
  """
  pretrained: str | None = None
  tiny: ModelConfig = TINY_MODEL
  tokenizer: str | None = None
  tokenizer_vocab: int = 512
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  scan_layers: bool = True  # False: unrolled layers (faster backward for shallow models)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """source: `domain:NAME`, `gym:TASK`, `gsm8k:FILE`; comma-separated for a mix."""
  source: str = "domain:tariff"
  difficulty: int = 0
  num_train: int = 2000
  num_eval: int = 128
  seed: int = 1234
  negatives_per_question: int = 3
  route_file: str | None = None
  prompt_buckets: tuple[int, ...] = (128, 256, 384, 512)
  sft_buckets: tuple[int, ...] = (128, 192, 256, 384, 512)

  def __post_init__(self):
    if self.num_train <= 0 or self.num_eval <= 0:
      raise ValueError("data.num_train and data.num_eval must be positive")
    if list(self.prompt_buckets) != sorted(self.prompt_buckets):
      raise ValueError(f"data.prompt_buckets must be increasing, got {self.prompt_buckets}")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Supervised fine-tuning on teacher CoTs (guided distillation, METHOD §4).

  steps: 0 disables the stage. route_share: share of items shown with routes
  and a gold `<verify>` block, so the student learns the MRPV format.
  num_items: how many training items the stage sees (None: all).
  kd_alpha/kd_temperature/kd_teacher: token-level KD mix (forward KL at
  temperature T, weight alpha) when the teacher is a model sharing the
  tokenizer: `kd_teacher` is a run directory whose final params teach (0 disables).
  """
  steps: int = 0
  batch_size: int = 32
  lr: float = 1e-3
  warmup: int = 20
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  route_share: float = 0.5
  num_items: int | None = None
  kd_alpha: float = 0.0
  kd_temperature: float = 1.0
  kd_teacher: str | None = None  # a run directory (its final params) sharing model and tokenizer
  microbatches: int = 1  # gradient accumulation inside the step (same loss, less memory)

  def __post_init__(self):
    if self.steps < 0 or self.batch_size <= 0:
      raise ValueError("sft.steps must be >= 0 and sft.batch_size > 0")
    if self.microbatches < 1 or self.batch_size % self.microbatches:
      raise ValueError(f"sft.microbatches={self.microbatches} must divide sft.batch_size="
                       f"{self.batch_size}")
    if not 0.0 <= self.route_share <= 1.0:
      raise ValueError(f"sft.route_share must be in [0, 1], got {self.route_share}")
    if not 0.0 <= self.kd_alpha <= 1.0:
      raise ValueError(f"sft.kd_alpha must be in [0, 1], got {self.kd_alpha}")


@dataclasses.dataclass(frozen=True)
class RFTConfig:
  """Rejection-sampling fine-tuning: keep the model's own correct samples."""
  rounds: int = 0
  questions: int = 256
  samples_per_question: int = 4
  temperature: float = 1.0
  steps_per_round: int = 100
  batch_size: int = 32
  lr: float = 5e-4


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """GRPO-family RL with MRPV routes and the EAAI schedule (METHOD §2, §3, §5).

  routes: 'eaai' (scheduled by `eaai`), 'always' (CoT-synthesizer style),
  'never' (plain GRPO). negatives: False keeps only positive routes (ablation).
  """
  steps: int = 0
  batch_prompts: int = 8
  group_size: int = 4
  lr: float = 3e-4
  warmup: int = 5
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  num_inner_updates: int = 1
  num_minibatches: int = 1
  microbatches: int = 1  # gradient accumulation inside each update (same loss, less memory)
  max_new_tokens: int = 160
  temperature: float = 1.0
  normalize_std: bool = True
  filter_zero_variance: bool = False
  mask_truncated: bool = False
  routes: str = "eaai"
  negatives: bool = True
  loss: losses.LossConfig = losses.LossConfig(kl_coef=0.04)
  mrpv: mrpv.MRPVConfig = mrpv.MRPVConfig()
  eaai: eaai.EAAIConfig = eaai.EAAIConfig()

  def __post_init__(self):
    if self.routes not in ("eaai", "always", "never"):
      raise ValueError(f"rl.routes={self.routes!r}; choose eaai, always or never")
    if self.group_size < 2:
      raise ValueError(f"rl.group_size={self.group_size}: group-relative advantages need >= 2")
    n = self.batch_prompts * self.group_size
    if n % self.num_minibatches:
      raise ValueError(
          f"rl.batch_prompts*group_size={n} is not divisible by rl.num_minibatches="
          f"{self.num_minibatches}; pick a divisor of {n}")
    if (n // self.num_minibatches) % self.group_size:
      raise ValueError(
          f"each minibatch ({n // self.num_minibatches} completions) must hold whole groups of "
          f"rl.group_size={self.group_size}; lower rl.num_minibatches")
    if self.num_inner_updates < 1:
      raise ValueError("rl.num_inner_updates must be >= 1")
    if self.microbatches < 1 or (n // self.num_minibatches) % self.microbatches:
      raise ValueError(
          f"rl.microbatches={self.microbatches} must divide the {n // self.num_minibatches} "
          f"completions of an update (batch_prompts*group_size/num_minibatches)")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  num_questions: int = 128
  k: int = 4
  temperature: float = 1.0
  max_new_tokens: int = 160
  batch_size: int = 64
  final_only: bool = False  # skip evaluating the run's starting point


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
