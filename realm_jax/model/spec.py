"""Which model a run uses: a pretrained checkpoint or a tiny one from scratch.

Precision policy: dtype / param_dtype "auto" resolve by backend when the run's
ModelConfig is built (`ModelSpec.model_dtypes`): float32 on CPU; bfloat16
params and compute on accelerators, where the train state keeps fp32 master
weights in the optimizer (`realm_jax.train.precision`). Logits, log-softmax and
RMSNorm statistics are fp32 in every case.
"""

from __future__ import annotations

import dataclasses

import jax

from realm_jax.model.config import LORA_TARGETS, LoraConfig, ModelConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_dtype(name: str, backend: str | None = None) -> str:
  """A dtype name; "auto": float32 on CPU, bfloat16 on accelerators (GPU, TPU).
  `backend`: jax.default_backend() unless given."""
  if name != "auto":
    return name
  return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"

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
  dtype: str = "auto"        # compute dtype; "auto": `resolve_dtype`
  param_dtype: str = "auto"  # params (the optimizer keeps fp32 masters of lower ones)
  # Operand dtype of the matmuls, accumulated in fp32 (`ModelConfig.matmul_dtype`); "auto":
  # the compute dtype. bfloat16 with fp32 compute: mixed precision on CPUs with AMX.
  matmul_dtype: str = "auto"
  remat: bool = False
  scan_layers: bool = True  # False: unrolled layers (faster backward for shallow models)
  # LoRA (`model.lora`): rank 0 trains every weight; rank r > 0 trains adapters of that rank
  # on `lora_targets` and freezes the rest (checkpoints then hold the adapters only).
  lora_rank: int = 0
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_TARGETS

  def __post_init__(self):
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"model.{name}={getattr(self, name)!r}; use one of {DTYPES}")
    if self.matmul_dtype not in ("auto", "float32", "bfloat16"):
      raise ValueError(f"model.matmul_dtype={self.matmul_dtype!r}; use auto, float32 or bfloat16")
    if self.tokenizer_vocab <= 0:
      raise ValueError(f"model.tokenizer_vocab={self.tokenizer_vocab} must be > 0")
    if self.lora_rank < 0:
      raise ValueError(f"model.lora_rank={self.lora_rank} must be >= 0 (0: no LoRA)")
    if self.lora_rank:
      try:
        self.lora()
      except ValueError as e:
        raise ValueError(str(e).replace("LoraConfig.", "model.lora_")) from None

  def lora(self) -> LoraConfig | None:
    """The run's adapters (None: full fine-tuning)."""
    if not self.lora_rank:
      return None
    return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=tuple(self.lora_targets))

  def model_dtypes(self, backend: str | None = None) -> dict[str, str | None]:
    """ModelConfig fields {'param_dtype', 'dtype', 'matmul_dtype'} of this run, "auto"
    resolved (matmul_dtype "auto": None, the compute dtype)."""
    return {"param_dtype": resolve_dtype(self.param_dtype, backend),
            "dtype": resolve_dtype(self.dtype, backend),
            "matmul_dtype": None if self.matmul_dtype == "auto" else self.matmul_dtype}
