"""LoRA: low-rank adapters beside a frozen base.

Adapters sit in the params tree beside the weights they adapt, stacked over L
like them: `model/layers/self_attn/q_proj/{kernel, lora_a, lora_b}` with A
[L, in, r] and B [L, r, out], so the adapted projection is

    y = x W + (alpha / r) (x A) B        (`layers.Linear`; B = 0 at init).

Training splits the tree (`split`): the adapters are what the optimizer sees
(its state exists only for them; checkpoints hold only them) and the rest is
the frozen base, which the jitted steps take as an argument they neither
donate nor update. The RL reference therefore shares the base's buffers.
A tree without adapters (`split` gives (params, None)) is full fine-tuning.

Export: `merged` folds the adapters into the base, W + (alpha / r) A B, for a
plain Hugging Face folder (`hf.save_hf`); `save_peft` writes the adapters in
the layout PEFT loads (`adapter_config.json`, `adapter_model.safetensors`,
names `base_model.model.<HF module>.lora_A.weight` [r, in] and
`lora_B.weight` [out, r]); `load_peft` reads such a folder back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from realm_jax.model.config import LoraConfig, ModelConfig, Params
from realm_jax.model.transformer import init_params

ADAPTER_KEYS = ("lora_a", "lora_b")
_PEFT_NAMES = {"lora_a": "lora_A", "lora_b": "lora_B"}


def split(params: Params) -> tuple[Params, Params | None]:
  """(adapters, frozen base) of a params tree (or any tree of its structure: shapes,
  shardings); (params, None) when it holds no adapters."""
  def walk(node):
    if not isinstance(node, Mapping):
      return None, node
    adapters, frozen = {}, {}
    for k, v in node.items():
      if k in ADAPTER_KEYS:
        adapters[k] = v
        continue
      a, f = walk(v)
      if a:
        adapters[k] = a
      if f is not None and not (isinstance(f, Mapping) and not f):
        frozen[k] = f
    return adapters, frozen
  adapters, frozen = walk(params)
  return (params, None) if not adapters else (adapters, frozen)


def merge(trainable: Params, frozen: Params | None) -> Params:
  """Inverse of `split`: the union of the two trees (`trainable` alone when frozen is None)."""
  if frozen is None:
    return trainable
  out = dict(frozen)
  for k, v in trainable.items():
    out[k] = merge(v, out[k]) if isinstance(v, Mapping) and k in out else v
  return out


def has_adapters(params: Params) -> bool:
  return split(params)[1] is not None


def add_adapters(params: Params, cfg: ModelConfig, rng: jax.Array) -> Params:
  """`params` (a base without adapters) with fresh adapters of `cfg.lora` (B = 0, so the
  model is unchanged). Only the adapters are initialised: the base's init is dead code
  in the compiled function."""
  if cfg.lora is None:
    raise ValueError("add_adapters needs a ModelConfig with lora set")
  fresh = jax.jit(lambda r: split(init_params(cfg, r))[0])(rng)
  return merge(fresh, split(params)[1] if has_adapters(params) else params)


def num_adapter_params(cfg: ModelConfig) -> int:
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  adapters, frozen = split(shapes)
  return 0 if frozen is None else sum(int(np.prod(x.shape)) for x in jax.tree.leaves(adapters))


def _adapted_nodes(params: Params, path: tuple[str, ...] = ()):
  """(path, node) of every projection node that holds adapters."""
  if isinstance(params, Mapping):
    if "lora_a" in params:
      yield path, params
      return
    for k, v in params.items():
      yield from _adapted_nodes(v, path + (k,))


def merged(params: Params, lora: LoraConfig) -> Params:
  """The base with the adapters folded in, W' = W + (alpha / r) A B (computed in fp32, stored
  in W's dtype), and no adapter leaves: a plain model of the same config without lora."""
  out = split(params)[1]
  if out is None:
    return params
  for path, node in _adapted_nodes(params):
    a, b = jnp.asarray(node["lora_a"], jnp.float32), jnp.asarray(node["lora_b"], jnp.float32)
    w = node["kernel"]
    target = out
    for k in path[:-1]:
      target[k] = dict(target[k])
      target = target[k]
    target[path[-1]] = dict(target[path[-1]], kernel=(
        jnp.asarray(w, jnp.float32) + lora.scale * jnp.matmul(a, b)).astype(w.dtype))
  return out


def _hf_module(path: tuple[str, ...], layer: int | None) -> str:
  """`model/layers/self_attn/q_proj` -> `model.layers.{layer}.self_attn.q_proj`."""
  parts = list(path)
  if "layers" in parts:
    parts[parts.index("layers")] = f"layers.{layer}"
  elif any(p.startswith("layers_") for p in parts):
    parts = [f"layers.{p[7:]}" if p.startswith("layers_") else p for p in parts]
  return ".".join(parts)


def peft_tensors(params: Params) -> dict[str, np.ndarray]:
  """PEFT's names and layouts of the adapters, layers unstacked (fp32)."""
  out = {}
  for path, node in _adapted_nodes(params):
    for key, peft in _PEFT_NAMES.items():
      arr = np.asarray(jnp.asarray(node[key], jnp.float32))
      stacked = "layers" in path
      for l in range(arr.shape[0]) if stacked else [None]:
        a = arr[l] if stacked else arr
        out[f"base_model.model.{_hf_module(path, l)}.{peft}.weight"] = np.ascontiguousarray(a.T)
  return out


def peft_config(lora: LoraConfig, base_model: str | None = None) -> dict[str, Any]:
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
          "lora_alpha": lora.alpha, "target_modules": sorted(lora.targets), "lora_dropout": 0.0,
          "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True,
          "base_model_name_or_path": base_model}


def save_peft(path: str | os.PathLike, params: Params, lora: LoraConfig,
              base_model: str | None = None) -> None:
  """Writes the adapters of `params` as a PEFT LoRA folder."""
  out = Path(path)
  out.mkdir(parents=True, exist_ok=True)
  tensors = peft_tensors(params)
  if not tensors:
    raise ValueError("the params hold no LoRA adapters to export")
  save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
  (out / "adapter_config.json").write_text(json.dumps(peft_config(lora, base_model), indent=2)
                                           + "\n")


def load_peft(path: str | os.PathLike, params: Params, cfg: ModelConfig) -> Params:
  """`params` (a base of `cfg`) with the adapters of the PEFT folder `path`; its rank,
  alpha and targets must be those of `cfg.lora`."""
  folder = Path(path)
  conf = json.loads((folder / "adapter_config.json").read_text())
  lora = cfg.lora
  if lora is None or conf.get("r") != lora.rank or conf.get("lora_alpha") != lora.alpha:
    raise ValueError(f"{folder / 'adapter_config.json'}: r={conf.get('r')}, lora_alpha="
                     f"{conf.get('lora_alpha')} do not match the model's lora config {lora}")
  tensors = load_file(str(folder / "adapter_model.safetensors"))
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  adapters = {}
  for path_, node in _adapted_nodes(shapes):
    target = adapters
    for k in path_:
      target = target.setdefault(k, {})
    for key, peft in _PEFT_NAMES.items():
      L = node[key].shape[0]
      names = [f"base_model.model.{_hf_module(path_, l)}.{peft}.weight" for l in range(L)]
      missing = [n for n in names if n not in tensors]
      if missing:
        raise ValueError(f"{folder / 'adapter_model.safetensors'}: no tensor {missing[0]!r}")
      target[key] = jnp.asarray(np.stack([tensors[n].T for n in names]), node[key].dtype)
  base = split(params)[1] if has_adapters(params) else params
  return merge(adapters, base)
