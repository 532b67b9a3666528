"""The network, its weights in and out, and generation.

Axis legend (tensor names and einsum strings, everywhere in the package):
  B batch, T query length, S key length (cache slots), D model, N query heads,
  K kv heads, g query heads per kv head (N = K * g), H head dim, F MLP,
  V vocab, L layers, G samples per prompt.

Modules: `config` (ModelConfig), `layers` (RoPE, RMSNorm, Linear, MLP, head),
`attention` (the cache-free kernels: CPU tiling, `jax.nn.dot_product_attention`;
cached decode), `splash` (the Pallas TPU kernel, under `shard_map` on a mesh),
`lora` (low-rank adapters beside a frozen base), `cache` (KV caches),
`transformer` (the Linen modules and the pure `init_params` / `apply`),
`sampling` (the compiled sampler), `hf` / `gguf` / `pretrained` (weights in
and out), `tokenizer`, `spec` (which model a run uses).

The transformer's pure functional interface is re-exported here:
`model.init_params`, `model.apply`, `model.forward`, ...
"""

from realm_jax.model.cache import grow_cache, init_cache, stack_cache, unstack_cache
from realm_jax.model.config import FAMILIES, KVCache, ModelConfig, Params, RopeScaling
from realm_jax.model.transformer import (apply, cast_params, forward, init_boxed, init_params,
                                         logical_axes, positions_from_mask, stack_layers,
                                         unstack_layers)

__all__ = ["FAMILIES", "KVCache", "ModelConfig", "Params", "RopeScaling", "apply", "cast_params",
           "forward", "grow_cache", "init_boxed", "init_cache", "init_params", "logical_axes",
           "positions_from_mask", "stack_cache", "stack_layers", "unstack_cache", "unstack_layers"]
