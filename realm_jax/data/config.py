"""The data a run reads: its source, difficulty, sizes and length buckets."""

from __future__ import annotations

import dataclasses


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
