"""Hugging Face checkpoints (config.json + safetensors) <-> realm_jax params.

Supported architectures: LlamaForCausalLM, Qwen2ForCausalLM (q/k/v bias),
Qwen3ForCausalLM (per-head q/k RMSNorm, explicit head_dim).

Conventions
- HF stores a linear layer as `weight [out, in]`; our kernel is its transpose
  `[in, out]`, stacked over layers on a leading axis L:
      model.layers.{i}.self_attn.q_proj.weight [N*H, D]
        -> params['model']['layers']['self_attn']['q_proj']['kernel'][i]  [D, N*H]
  Norm weights, biases and the embedding keep their HF layout.
- Loading validates every tensor name and shape against the config before it
  reads any data, so a bad checkpoint fails whole, never half loaded. Unknown
  tensors are an error too (they would be silently dropped weights), except
  buffers HF itself ignores (`rotary_emb.inv_freq`) and a tied `lm_head`.
- Param dtype: `dtype=` if given, else config.json's `torch_dtype`/`dtype`,
  else float32; the compute dtype is set to the same (change it with
  `dataclasses.replace(config, dtype=...)`).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes  # registers 'bfloat16' with numpy, which safetensors' numpy reader needs
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from realm_jax.model import ModelConfig, Params, RopeScaling

ARCHITECTURES = {'LlamaForCausalLM': 'llama', 'Qwen2ForCausalLM': 'qwen2', 'Qwen3ForCausalLM': 'qwen3'}
FAMILY_ARCHITECTURE = {family: arch for arch, family in ARCHITECTURES.items()}
NP_DTYPES = {'float32': np.float32, 'float16': np.float16, 'bfloat16': ml_dtypes.bfloat16}
IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)


# ------------------------------------------------------------------ config
def dtype_name(value, source: str) -> str:
  name = str(value).removeprefix('torch.')
  if name not in NP_DTYPES:
    raise ValueError(f'{source}: dtype {value!r} is not supported; use one of {sorted(NP_DTYPES)}')
  return name


def checked_config(source: str, **fields) -> ModelConfig:
  """ModelConfig(**fields); a validation error names the file it came from."""
  try:
    return ModelConfig(**fields)
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from e


def config_from_hf(hf: dict, source: str = 'config.json', dtype: str | None = None) -> ModelConfig:
  """ModelConfig from a parsed HF config.json; errors name `source` and the field."""
  archs = hf.get('architectures') or []
  supported = [a for a in archs if a in ARCHITECTURES]
  if not supported:
    raise ValueError(f"{source}: field 'architectures' is {archs!r}; supported: "
                     f'{sorted(ARCHITECTURES)}')
  arch = supported[0]
  family = ARCHITECTURES[arch]

  def need(key):
    if key not in hf:
      raise ValueError(f"{source}: field {key!r} is missing (required for {arch})")
    return hf[key]

  def refuse(key, bad: Callable[[object], bool], why: str):
    if key in hf and bad(hf[key]):
      raise ValueError(f'{source}: field {key!r}={hf[key]!r} is not supported ({why})')

  refuse('hidden_act', lambda v: v != 'silu', 'only silu MLPs')
  refuse('mlp_bias', bool, 'MLP layers have no bias')
  refuse('use_sliding_window', bool, 'only full attention')
  refuse('layer_types', lambda v: any(t != 'full_attention' for t in v), 'only full attention')
  refuse('partial_rotary_factor', lambda v: v != 1.0, 'RoPE covers the whole head')
  if family in ('llama', 'qwen3'):  # their attention_bias also puts a bias on o_proj
    refuse('attention_bias', bool, 'o_proj has no bias')

  rope = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  rope_theta = float(rope.get('rope_theta', hf.get('rope_theta', 10000.0)))
  if rope_type == 'default':
    scaling = None
  elif rope_type == 'llama3':
    scaling = RopeScaling(**{f.name: type(f.default)(rope[f.name]) if f.name in rope else f.default
                             for f in dataclasses.fields(RopeScaling)})
  else:
    raise ValueError(f"{source}: rope type {rope_type!r} (field 'rope_scaling'/'rope_parameters') "
                     "is not supported; supported: 'default', 'llama3'")

  num_heads = need('num_attention_heads')
  dtype = dtype_name(dtype or hf.get('torch_dtype') or hf.get('dtype') or 'float32', source)
  return checked_config(
      source, vocab_size=need('vocab_size'), num_layers=need('num_hidden_layers'),
      d_model=need('hidden_size'), num_heads=num_heads,
      num_kv_heads=hf.get('num_key_value_heads') or num_heads,
      head_dim=hf.get('head_dim') or need('hidden_size') // num_heads,
      mlp_dim=need('intermediate_size'), family=family,
      rope_theta=rope_theta, rope_scaling=scaling, rms_eps=float(hf.get('rms_norm_eps', 1e-6)),
      qkv_bias=family == 'qwen2', qk_norm=family == 'qwen3',
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      max_seq_len=hf.get('max_position_embeddings', 2048), param_dtype=dtype, dtype=dtype)


def config_to_hf(config: ModelConfig, architecture: str | None = None) -> dict:
  """HF config.json dict; rope written in the legacy keys every transformers reads."""
  c = config
  arch = architecture or FAMILY_ARCHITECTURE[c.family]
  if arch not in ARCHITECTURES:
    raise ValueError(f'architecture {arch!r} is not supported; supported: {sorted(ARCHITECTURES)}')
  want = ARCHITECTURES[arch]
  if c.qkv_bias != (want == 'qwen2') or c.qk_norm != (want == 'qwen3'):
    raise ValueError(f'{arch} cannot hold this model (qkv_bias={c.qkv_bias}, '
                     f'qk_norm={c.qk_norm}); {arch} has qkv_bias={want == "qwen2"}, '
                     f'qk_norm={want == "qwen3"}')
  hf = {
      'architectures': [arch], 'model_type': want, 'vocab_size': c.vocab_size,
      'hidden_size': c.d_model, 'intermediate_size': c.mlp_dim,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.num_kv_heads, 'head_dim': c.head_dim, 'hidden_act': 'silu',
      'max_position_embeddings': c.max_seq_len, 'rms_norm_eps': c.rms_eps,
      'rope_theta': c.rope_theta, 'tie_word_embeddings': c.tie_embeddings,
      'torch_dtype': c.param_dtype, 'attention_bias': False, 'use_cache': True,
  }
  if want == 'qwen2':
    hf['use_sliding_window'] = False
  if c.rope_scaling is not None:
    hf['rope_scaling'] = {'rope_type': 'llama3', **dataclasses.asdict(c.rope_scaling)}
  return hf


# ------------------------------------------------------------- tensor names
@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One params leaf: its tree path, HF name (`{i}` = layer) and HF shape."""
  path: tuple[str, ...]
  hf_name: str
  hf_shape: tuple[int, ...]
  transpose: bool  # linear weight [out, in] -> kernel [in, out]

  @property
  def per_layer(self) -> bool:
    return '{i}' in self.hf_name


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
  """Every params leaf of `config` with its HF name and shape."""
  c = config
  D, N, K, H, F, V = c.d_model, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim, c.vocab_size
  L = ('model', 'layers')
  specs = [TensorSpec(('model', 'embed_tokens', 'embedding'), 'model.embed_tokens.weight', (V, D), False),
           TensorSpec(('model', 'norm', 'weight'), 'model.norm.weight', (D,), False)]
  if not c.tie_embeddings:
    specs.append(TensorSpec(('lm_head', 'kernel'), 'lm_head.weight', (V, D), True))
  for norm in ('input_layernorm', 'post_attention_layernorm'):
    specs.append(TensorSpec(L + (norm, 'weight'), f'model.layers.{{i}}.{norm}.weight', (D,), False))
  linears = {('self_attn', 'q_proj'): (N * H, D), ('self_attn', 'k_proj'): (K * H, D),
             ('self_attn', 'v_proj'): (K * H, D), ('self_attn', 'o_proj'): (D, N * H),
             ('mlp', 'gate_proj'): (F, D), ('mlp', 'up_proj'): (F, D), ('mlp', 'down_proj'): (D, F)}
  for (block, name), shape in linears.items():
    specs.append(TensorSpec(L + (block, name, 'kernel'), f'model.layers.{{i}}.{block}.{name}.weight',
                            shape, True))
    if c.qkv_bias and name in ('q_proj', 'k_proj', 'v_proj'):
      specs.append(TensorSpec(L + (block, name, 'bias'), f'model.layers.{{i}}.{block}.{name}.bias',
                              shape[:1], False))
  if c.qk_norm:
    for name in ('q_norm', 'k_norm'):
      specs.append(TensorSpec(L + ('self_attn', name, 'weight'),
                              f'model.layers.{{i}}.self_attn.{name}.weight', (H,), False))
  return specs


def expected_names(config: ModelConfig) -> dict[str, tuple[int, ...]]:
  """HF tensor name -> HF shape, layers expanded."""
  out = {}
  for s in tensor_specs(config):
    for i in range(config.num_layers) if s.per_layer else [None]:
      out[s.hf_name.format(i=i)] = s.hf_shape
  return out


class TensorSource(abc.ABC):
  """What `assemble_params` reads from: HF-named tensors in HF layout."""

  @abc.abstractmethod
  def names(self) -> set[str]:
    """Every tensor name the source holds."""

  @abc.abstractmethod
  def shape(self, name: str) -> tuple[int, ...]:
    """HF-layout shape, without reading the data."""

  @abc.abstractmethod
  def get(self, name: str) -> np.ndarray:
    """The tensor in HF layout (any float dtype)."""

  @abc.abstractmethod
  def where(self, name: str) -> str:
    """The file `name` is (or should be) in, for error messages."""


def check_source(config: ModelConfig, src: TensorSource, ignore: Callable[[str], bool]) -> None:
  """Every expected tensor present with the right shape, nothing unexpected."""
  want = expected_names(config)
  have = src.names()
  for name, shape in want.items():
    if name not in have:
      raise ValueError(f'{src.where(name)}: tensor {name!r} is missing')
    if tuple(src.shape(name)) != shape:
      raise ValueError(f'{src.where(name)}: tensor {name!r} has shape {tuple(src.shape(name))}, '
                       f'expected {shape}')
  extra = sorted(n for n in have - want.keys() if not ignore(n))
  if extra:
    raise ValueError(f'{src.where(extra[0])}: unexpected tensors {extra[:8]}'
                     f'{" ..." if len(extra) > 8 else ""} ({len(extra)} in all); this model '
                     'config has no place for them')


def assemble_params(config: ModelConfig, src: TensorSource) -> Params:
  """Stacked params tree, filled one layer at a time in `config.param_dtype`.

  Call `check_source` first; this trusts names and shapes.
  """
  np_dtype = NP_DTYPES[config.param_dtype]
  params: dict = {}
  for s in tensor_specs(config):
    shape = s.hf_shape[::-1] if s.transpose else s.hf_shape
    fix = (lambda a: a.T) if s.transpose else (lambda a: a)
    if s.per_layer:
      buf = np.empty((config.num_layers,) + shape, np_dtype)
      for i in range(config.num_layers):
        buf[i] = fix(src.get(s.hf_name.format(i=i)))
    else:
      buf = np.asarray(fix(src.get(s.hf_name)), np_dtype)
    node = params
    for key in s.path[:-1]:
      node = node.setdefault(key, {})
    node[s.path[-1]] = jnp.asarray(buf)
    del buf
  return params


def params_to_hf(config: ModelConfig, params: Params) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, HF-layout numpy array) for every tensor, layers unstacked."""
  for s in tensor_specs(config):
    node = params
    for key in s.path:
      node = node[key]
    arr = np.asarray(node)
    for i in range(config.num_layers) if s.per_layer else [None]:
      a = arr[i] if s.per_layer else arr
      yield s.hf_name.format(i=i), np.ascontiguousarray(a.T if s.transpose else a)


# -------------------------------------------------------------- safetensors
class SafetensorsSource(TensorSource):
  """A single `model.safetensors` or the shards of `model.safetensors.index.json`."""

  def __init__(self, directory: Path, stack: contextlib.ExitStack):
    single, index = directory / 'model.safetensors', directory / 'model.safetensors.index.json'
    if index.is_file():
      try:
        weight_map = json.loads(index.read_text())['weight_map']
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from e
      files = {name: directory / f for name, f in weight_map.items()}
    elif single.is_file():
      files = None
    else:
      raise FileNotFoundError(f'{directory}: no model.safetensors or model.safetensors.index.json')
    self._default = index if files is not None else single
    paths = sorted(set(files.values())) if files is not None else [single]
    self._handles = {}
    for p in paths:
      if not p.is_file():
        raise FileNotFoundError(f'{index}: lists shard {p.name}, which does not exist')
      try:
        self._handles[p] = stack.enter_context(safe_open(str(p), framework='np'))
      except Exception as e:  # SafetensorError: truncated or corrupt header/data
        raise ValueError(f'{p}: cannot read safetensors file (truncated or corrupt?): {e}') from e
    found = {name: p for p, h in self._handles.items() for name in h.keys()}
    if files is not None:
      for name, p in files.items():
        if found.get(name) != p:
          raise ValueError(f'{p}: tensor {name!r} is listed in {index.name} but not in this shard')
    self._files = found

  def names(self) -> set[str]:
    return set(self._files)

  def shape(self, name):
    return tuple(self._handles[self._files[name]].get_slice(name).get_shape())

  def get(self, name):
    return self._handles[self._files[name]].get_tensor(name)

  def where(self, name):
    return str(self._files.get(name, self._default))


def read_config(directory: str | os.PathLike) -> tuple[dict, Path]:
  path = Path(directory) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(f'{directory}: no config.json (expected a Hugging Face model directory)')
  try:
    return json.loads(path.read_text()), path
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: invalid JSON: {e}') from e


def load_hf(path: str | os.PathLike, dtype: str | None = None) -> tuple[ModelConfig, Params]:
  """(ModelConfig, params) from an HF model directory (config.json + safetensors)."""
  hf, config_path = read_config(path)
  config = config_from_hf(hf, str(config_path), dtype)
  tied = config.tie_embeddings
  ignore = lambda n: n.endswith(IGNORED_SUFFIXES) or (tied and n == 'lm_head.weight')
  with contextlib.ExitStack() as stack:
    src = SafetensorsSource(Path(path), stack)
    check_source(config, src, ignore)
    return config, assemble_params(config, src)


def save_hf(path: str | os.PathLike, config: ModelConfig, params: Params,
            architecture: str | None = None) -> None:
  """Writes config.json + model.safetensors that transformers loads as `architecture`
  (default: the family's *ForCausalLM), weights in `config.param_dtype`."""
  hf = config_to_hf(config, architecture)
  out = Path(path)
  out.mkdir(parents=True, exist_ok=True)
  np_dtype = NP_DTYPES[config.param_dtype]
  tensors = {name: a.astype(np_dtype, copy=False) for name, a in params_to_hf(config, params)}
  save_file(tensors, str(out / 'model.safetensors'), metadata={'format': 'pt'})
  (out / 'config.json').write_text(json.dumps(hf, indent=2) + '\n')
