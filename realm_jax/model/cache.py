"""KV caches: the stacked [L, B, S, K, H] layout and the layer-list decode layout."""

from __future__ import annotations

import jax.numpy as jnp

from realm_jax.model.config import KVCache, ModelConfig
from realm_jax.model.layers import _dt


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
  """Zeroed KV cache [L, B, S, K, H] in the cache dtype."""
  dt = _dt(cfg.cache_dtype or cfg.dtype)
  shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}


def unstack_cache(cache: KVCache) -> KVCache:
  """Stacked {'k', 'v': [L, B, S, K, H]} -> the layer-list decode layout:
  {'k': (L x [B, K, H, S]), 'v': (L x [B, K, S, H])}."""
  return {"k": tuple(jnp.transpose(cache["k"], (0, 1, 3, 4, 2))),
          "v": tuple(jnp.transpose(cache["v"], (0, 1, 3, 2, 4)))}


def grow_cache(cache: KVCache, max_len: int) -> KVCache:
  """Layer-list decode cache with S slots -> `max_len` >= S slots (new slots zero)."""
  S = cache["v"][0].shape[2]
  if max_len < S:
    raise ValueError(f"grow_cache: cache already has {S} slots > max_len={max_len}")
  if max_len == S:
    return cache
  pad_k = lambda k: jnp.pad(k, ((0, 0), (0, 0), (0, 0), (0, max_len - S)))
  pad_v = lambda v: jnp.pad(v, ((0, 0), (0, 0), (0, max_len - S), (0, 0)))
  return {"k": tuple(map(pad_k, cache["k"])), "v": tuple(map(pad_v, cache["v"]))}


def stack_cache(cache: KVCache) -> KVCache:
  """Layer-list decode layout -> stacked {'k', 'v': [L, B, S, K, H]}."""
  return {"k": jnp.transpose(jnp.stack(cache["k"]), (0, 1, 4, 2, 3)),
          "v": jnp.transpose(jnp.stack(cache["v"]), (0, 1, 3, 2, 4))}
