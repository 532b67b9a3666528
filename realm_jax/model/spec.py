"""Which model a run uses: a pretrained checkpoint or a tiny one from scratch."""

from __future__ import annotations

import dataclasses

from realm_jax.model.config import ModelConfig

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
