"""The transformer's configuration: shapes, family, dtypes, attention kernel and tiling."""

from __future__ import annotations

import dataclasses
from typing import Any

Params = Any
KVCache = dict  # {'k': [L, B, S, K, H], 'v': [L, B, S, K, H]}

FAMILIES = ("llama", "qwen2", "qwen3")
# Cache-free attention kernels (`attention.self_attention`): "auto" picks by backend.
ATTENTION_IMPLS = ("auto", "tiled", "xla", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent RoPE scaling."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


# The projections LoRA may adapt (HF module names); the default adapts all of them.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters on the projections named in `targets` (`model.lora`):
  y = x W + (alpha / rank) (x A) B, A [in, rank], B [rank, out], B zero at init."""
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    if self.rank < 1:
      raise ValueError(f"LoraConfig.rank={self.rank} must be >= 1")
    if self.alpha <= 0:
      raise ValueError(f"LoraConfig.alpha={self.alpha} must be > 0")
    unknown = sorted(set(self.targets) - set(LORA_TARGETS))
    if unknown or not self.targets:
      raise ValueError(f"LoraConfig.targets={self.targets!r}: name one or more of {LORA_TARGETS}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  family: str = "llama"
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_eps: float = 1e-6
  qkv_bias: bool = False
  qk_norm: bool = False
  tie_embeddings: bool = False
  max_seq_len: int = 2048
  param_dtype: str = "float32"
  dtype: str = "float32"
  cache_dtype: str | None = None  # None: same as `dtype`
  # Operand dtype of the projection and head matmuls, accumulated in fp32 (`layers.matmul`);
  # None: the compute dtype. "bfloat16" with fp32 compute is mixed precision for CPUs with
  # AMX / AVX512-BF16: fp32 norms, softmax and residual stream, bf16 x bf16 -> fp32 matmuls.
  matmul_dtype: str | None = None
  remat: bool = False
  # Run the layers under `nn.scan` (compile time independent of depth) or as
  # an unrolled Python loop over the same stacked params (no stacked residual
  # buffers to fill and slice in the backward pass: faster for shallow models).
  scan_layers: bool = True
  # Kernel of the cache-free (training / scoring) attention: "tiled" (`causal_attention`,
  # CPU), "xla" / "cudnn" (`jax.nn.dot_product_attention`, GPU), "splash" (the Pallas TPU
  # kernel; interpreted off TPU). "auto": by backend (`attention.resolve_attention_impl`).
  attention_impl: str = "auto"
  # Tiling of the cache-free (training / scoring) attention, `causal_attention`:
  # batch rows per block and query blocks per sequence (each skips the keys
  # after its end). None: automatic (`attention_tiling`). Any value gives the
  # same numbers.
  attention_block_rows: int | None = None
  attention_query_blocks: int | None = None
  # Independent row groups per block (XLA:CPU runs them side by side), and
  # whether the forward keeps its exp(logits - max) tiles for the backward
  # instead of recomputing them. None: automatic (`attention_tiling`).
  attention_row_chains: int | None = None
  attention_save_probs: bool | None = None
  init_std: float = 0.02
  # Low-rank adapters (`model.lora`); None: the plain model.
  lora: LoraConfig | None = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"ModelConfig.family={self.family!r}; expected one of {FAMILIES}")
    for name in ("vocab_size", "num_layers", "d_model", "num_heads",
                 "num_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} must be a multiple of "
          f"num_kv_heads={self.num_kv_heads} (grouped-query attention)")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; expected one of "
                       f"{ATTENTION_IMPLS}")
    for name in ("attention_block_rows", "attention_query_blocks", "attention_row_chains"):
      if getattr(self, name) is not None and getattr(self, name) < 1:
        raise ValueError(f"ModelConfig.{name} must be positive or None (automatic), "
                         f"got {getattr(self, name)}")
    for name in ("param_dtype", "dtype") + (("cache_dtype",) if self.cache_dtype else ()):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; use float32, bfloat16 or float16")
    # fp16 operands would round the backward's cotangents too, with no loss scaling to keep
    # small gradients from underflowing
    if self.matmul_dtype not in (None, "float32", "bfloat16"):
      raise ValueError(f"ModelConfig.matmul_dtype={self.matmul_dtype!r}; use float32 or bfloat16")

  @property
  def num_params(self) -> int:
    D, N, K, H, F, V = (self.d_model, self.num_heads, self.num_kv_heads,
                        self.head_dim, self.mlp_dim, self.vocab_size)
    attn = D * N * H * 2 + D * K * H * 2 + (N * H + 2 * K * H if self.qkv_bias else 0)
    layer = attn + 3 * D * F + 2 * D + (2 * H if self.qk_norm else 0)
    return V * D * (1 if self.tie_embeddings else 2) + self.num_layers * layer + D
