"""Decoder-only transformer for the Llama / Qwen2 / Qwen3 families (Flax Linen).

Pure init/apply: `init_params(config, rng)` returns a plain params pytree and
`apply(params, config, ...)` is a pure function of it; nothing stateful is held
by the training step.

Axis legend (used in tensor names and einsum strings):
  B batch, T query length, S key length (cache slots), D model, N query heads,
  K kv heads, g query heads per kv head (N = K * g), H head dim, F MLP,
  V vocab, L layers.

Conventions
- Batches are left padded. `positions_BT` are the real token positions (for
  RoPE) and `kv_mask_BS` marks valid key slots. Attention is causal in *slot*
  space: the query in slot i sees key slots j <= i that are valid.
- Layers are stacked on a leading axis L (`nn.scan`) and optionally remat'd.
- Decode layout (for compiled sampling loops): `unstack_layers(params)` and
  `unstack_cache(cache)` give one buffer per layer (`model/layers_{l}/...`,
  cache {'k': (L x [B, K, H, S]), 'v': (L x [B, K, S, H])}). With a layer-list
  cache, `apply` runs the layers unrolled and updates each layer's buffers in
  place, so a while-loop carry holds no stacked array that would be sliced
  (copied) every step, and both attention dots read the buffers with their
  batch axes (B, K) leading, so XLA makes no transposed copy of the cache.
- Parameter paths mirror Hugging Face names: `model/layers/self_attn/q_proj/
  kernel` is HF `model.layers.{i}.self_attn.q_proj.weight` transposed and
  stacked over i; norms keep HF's `weight`; embeddings are `embedding`.
- Params may be fp32 or bf16; compute dtype is configurable; logits, softmax
  and RMSNorm statistics are always fp32.
- Logical axis names on params and activations let `sharding.py` map them to a
  mesh; without active rules every constraint is a no-op.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from realm_jax.model.attention import Attention
from realm_jax.model.config import KVCache, ModelConfig, Params
from realm_jax.model.layers import MLP, RMSNorm, _dt, constrain, head_matmul, rope_inv_freq


class DecoderLayer(nn.Module):
  """One pre-norm block; scanned over L with carry (x, cache)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, carry, layer, positions_BT, kv_mask_BS, inv_freq, cache_index):
    x_BTD, cache = carry
    c = self.cfg
    h = RMSNorm(c.rms_eps, _dt(c.param_dtype), name="input_layernorm")(x_BTD)
    attn, cache = Attention(c, name="self_attn")(h, positions_BT, kv_mask_BS, inv_freq,
                                                 layer, cache, cache_index)
    x_BTD = x_BTD + attn
    h = RMSNorm(c.rms_eps, _dt(c.param_dtype), name="post_attention_layernorm")(x_BTD)
    x_BTD = constrain(x_BTD + MLP(c, name="mlp")(h), ("batch", "length", "embed"))
    return (x_BTD, cache), None


class Model(nn.Module):
  """HF `model.*`: embeddings, stacked layers, final norm.

  `unrolled`: one `layers_{l}` module per layer and a layer-list cache (the
  decode layout, see the module docstring) instead of `nn.scan` over `layers`.
  """
  cfg: ModelConfig
  unrolled: bool = False

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, kv_mask_BS, cache, cache_index):
    c = self.cfg
    embed = nn.Embed(c.vocab_size, c.d_model, param_dtype=_dt(c.param_dtype),
                     dtype=_dt(c.dtype), name="embed_tokens",
                     embedding_init=nn.with_logical_partitioning(
                         nn.initializers.normal(c.init_std), ("vocab", "embed")))
    x_BTD = constrain(embed(tokens_BT), ("batch", "length", "embed"))
    layer_cls = DecoderLayer
    if c.remat:
      layer_cls = nn.remat(layer_cls, prevent_cse=False,
                           policy=jax.checkpoint_policies.nothing_saveable)
    inv_freq = rope_inv_freq(c)
    if self.unrolled:
      ks, vs = [], []
      for l in range(c.num_layers):
        layer_cache = None if cache is None else {"k": cache["k"][l], "v": cache["v"][l]}
        (x_BTD, layer_cache), _ = layer_cls(c, name=f"layers_{l}")(
            (x_BTD, layer_cache), l, positions_BT, kv_mask_BS, inv_freq, cache_index)
        if layer_cache is not None:
          ks.append(layer_cache["k"])
          vs.append(layer_cache["v"])
      if cache is not None:
        cache = {"k": tuple(ks), "v": tuple(vs)}
    else:
      layers = nn.scan(layer_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                       length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      (x_BTD, cache), _ = layers(c, name="layers")(
          (x_BTD, cache), jnp.arange(c.num_layers), positions_BT, kv_mask_BS, inv_freq, cache_index)
    x_BTD = RMSNorm(c.rms_eps, _dt(c.param_dtype), name="norm")(x_BTD)
    return x_BTD, embed, cache


class Transformer(nn.Module):
  """HF `*ForCausalLM`: fp32 logits [B, T, V] and the updated cache.

  The untied head sits at HF's path `lm_head/kernel`. `last_only` computes
  logits for the last position only ([B, 1, V]); `logits_from=s` for
  positions s.. only ([B, T-s, V]): the head and its softmax are skipped where
  nobody reads them (prompt positions in RL).
  """
  cfg: ModelConfig
  unrolled: bool = False

  @nn.compact
  def __call__(self, tokens_BT, positions_BT, kv_mask_BS, cache=None, cache_index=0,
               last_only=False, logits_from=0):
    c = self.cfg
    x_BTD, embed, cache = Model(c, self.unrolled, name="model")(
        tokens_BT, positions_BT, kv_mask_BS, cache, cache_index)
    if last_only:
      x_BTD = x_BTD[:, -1:]
    elif logits_from:
      x_BTD = x_BTD[:, logits_from:]
    w = embed.embedding if c.tie_embeddings else LMHead(c, name="lm_head")()  # [V, D] / [D, V]
    B, T, D = x_BTD.shape  # 2-D matmul, as in `Linear`
    logits_BTV = head_matmul(x_BTD.reshape(B * T, D), w, c.matmul_dtype,
                             w_transposed=c.tie_embeddings).reshape(B, T, -1)
    return constrain(logits_BTV, ("batch", "length", "vocab")), cache


class LMHead(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self):
    c = self.cfg
    return self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(c.init_std), ("embed", "vocab")),
        (c.d_model, c.vocab_size), _dt(c.param_dtype))


# ----------------------------------------------------------------------------
# Pure functional interface.


def init_boxed(cfg: ModelConfig, rng: jax.Array) -> Params:
  """Params with their logical-axis metadata (`nn.Partitioned` boxes)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  # A 1-token dummy batch: no activation constraints (they need divisible batches).
  with nn.logical_axis_rules(()):
    return Transformer(cfg).init(rng, tokens, tokens, jnp.ones((1, 1), bool))["params"]


def init_params(cfg: ModelConfig, rng: jax.Array) -> Params:
  """Plain params pytree (HF-named), unboxed."""
  return nn.unbox(init_boxed(cfg, rng))


def logical_axes(cfg: ModelConfig) -> Params:
  """Tree of logical-axis PartitionSpecs with the same structure as params."""
  abstract = jax.eval_shape(lambda: init_boxed(cfg, jax.random.key(0)))
  return nn.get_partition_spec(abstract)


def positions_from_mask(mask_BT: jax.Array) -> jax.Array:
  """Real positions of left-padded tokens: cumsum(mask) - 1, clipped at 0."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=-1) - 1, 0)


def apply(params: Params, cfg: ModelConfig, tokens_BT: jax.Array, mask_BT: jax.Array | None = None,
          *, positions_BT: jax.Array | None = None, cache: KVCache | None = None,
          cache_index: jax.Array | int = 0, kv_mask_BS: jax.Array | None = None,
          last_only: bool = False, logits_from: int = 0):
  """Forward pass. Returns (fp32 logits [B, T, V], updated cache or None).

  Without a cache, `mask_BT` marks real tokens of a left-padded batch. With a
  cache, the T tokens are written at slots [cache_index, cache_index + T) and
  `kv_mask_BS` (required) marks which of the S slots hold real tokens. A
  layer-list cache (`unstack_cache`) runs the unrolled decode layout and comes
  back as a layer-list; params may then be stacked or `unstack_layers`'d.
  `last_only=True` returns logits of the last position only, [B, 1, V];
  `logits_from=s` (a Python int) those of positions s.. only, [B, T-s, V].
  """
  tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
  if mask_BT is None:
    mask_BT = jnp.ones(tokens_BT.shape, bool)
  mask_BT = jnp.asarray(mask_BT).astype(bool)
  if positions_BT is None:
    positions_BT = positions_from_mask(mask_BT)
  if cache is None:
    kv_mask_BS = mask_BT
  elif kv_mask_BS is None:
    raise ValueError("apply(..., cache=...) needs kv_mask_BS marking valid cache slots")
  unrolled = cache is not None and isinstance(cache["k"], (tuple, list))
  if cache is None and not cfg.scan_layers:
    unrolled = True  # a cache-free pass over per-layer slices of the stacked params
  if unrolled and "layers" in params["model"]:
    params = unstack_layers(params)
  elif not unrolled and "layers" not in params["model"]:
    raise ValueError("params from unstack_layers need a layer-list cache (unstack_cache); "
                     "use the stacked params otherwise")
  return Transformer(cfg, unrolled).apply({"params": params}, tokens_BT, positions_BT,
                                          kv_mask_BS, cache, cache_index, last_only,
                                          int(logits_from))


def forward(params: Params, tokens: jax.Array, config: ModelConfig) -> jax.Array:
  """fp32 logits [B, T, V] for an unpadded int32 batch [B, T]."""
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2:
    raise ValueError(f"forward expects int32 tokens [B, T], got shape {tokens.shape}")
  return apply(params, config, tokens)[0]


def unstack_layers(params: Params) -> Params:
  """Stacked `model/layers/...` [L, ...] -> one subtree per layer, `model/layers_{l}/...`.

  Slice once, outside a decode loop, so the loop body reads each layer's
  weights in place instead of slicing the stacked arrays every step.
  """
  model = dict(params["model"])
  layers = model.pop("layers")
  L = jax.tree.leaves(layers)[0].shape[0]
  for l in range(L):
    model[f"layers_{l}"] = jax.tree.map(lambda x, l=l: x[l], layers)
  return {**params, "model": model}


def stack_layers(params: Params) -> Params:
  """Inverse of `unstack_layers`: `model/layers_{l}/...` subtrees -> stacked `model/layers/...`."""
  model = dict(params["model"])
  L = sum(1 for k in model if k.startswith("layers_"))
  layers = [model.pop(f"layers_{l}") for l in range(L)]
  model["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return {**params, "model": model}


def cast_params(params: Params, dtype: str) -> Params:
  return jax.tree.map(lambda x: x.astype(_dt(dtype)), params)
