"""The data a run reads: its source, difficulty, sizes, route limits and length buckets."""

from __future__ import annotations

import dataclasses

# Longest route a route file may hold. Built-in domain routes stay far below it (under ~1,100
# characters up to difficulty 5; tariff, the longest, grows ~200 characters per level), so only
# runaway LLM output reaches it.
MAX_ROUTE_CHARS = 8000


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """source: `domain:NAME`, `gym:TASK`, `gsm8k:FILE`; comma-separated for a mix.

  route_file: JSONL routes from any LLM attached to the training questions;
  routes longer than `max_route_chars` characters (or empty) are refused and counted.
  num_valid: a held-out validation slice (same source and difficulty, no question shared with
  train or eval) the stages validate on when their `eval_every` > 0; 0 disables.
  positives_per_question: correct routes per question in a built-in or user domain's route pool
  (the gold route, then other wordings and step orders; `Domain.positive_routes`); other sources
  have one, their reference CoT.
  """
  source: str = "domain:tariff"
  difficulty: int = 0
  num_train: int = 2000
  num_eval: int = 128
  num_valid: int = 128
  seed: int = 1234
  negatives_per_question: int = 3
  positives_per_question: int = 1
  route_file: str | None = None
  max_route_chars: int = MAX_ROUTE_CHARS
  prompt_buckets: tuple[int, ...] = (128, 256, 384, 512)
  sft_buckets: tuple[int, ...] = (128, 192, 256, 384, 512)

  def __post_init__(self):
    if self.num_train <= 0 or self.num_eval <= 0:
      raise ValueError(f"data.num_train={self.num_train} and data.num_eval={self.num_eval} must "
                       f"be > 0")
    for name in ("difficulty", "negatives_per_question"):
      if getattr(self, name) < 0:
        raise ValueError(f"data.{name}={getattr(self, name)} must be >= 0")
    if self.num_valid < 0:
      raise ValueError(f"data.num_valid={self.num_valid} must be >= 0 (0: no validation slice)")
    if self.positives_per_question < 1:
      raise ValueError(f"data.positives_per_question={self.positives_per_question} must be >= 1")
    if self.max_route_chars <= 0:
      raise ValueError(f"data.max_route_chars={self.max_route_chars} must be > 0")
    for name in ("prompt_buckets", "sft_buckets"):
      buckets = getattr(self, name)
      if not buckets or min(buckets) <= 0 or list(buckets) != sorted(set(buckets)):
        raise ValueError(f"data.{name} must be positive token counts, increasing, e.g. "
                         f"data.{name}=128,256,512; got {buckets}")
