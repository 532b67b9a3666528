"""Supervised stages' options (format warm-up, guided distillation)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  """Supervised fine-tuning on teacher CoTs (guided distillation, METHOD §4).

  steps: 0 disables the stage. route_share: share of items shown with routes
  and a gold `<verify>` block (the MRPV format). Default 0: guided distillation's student
  sees the question only (METHOD §4); with a share > 0 that share of items shows routes
  whose positive is usually the target CoT itself, a copy task rather than distillation.
  route_level: the routed items show questions of this data level instead (their routes,
  gold verdicts and CoTs; None: the run's level), drawn from that level's training split, so a
  start learns to follow a verified route where it has no rules of its own.
  num_items: how many training items the stage sees (None: all).
  kd_alpha/kd_temperature/kd_teacher: token-level KD mix (forward KL at
  temperature T, weight alpha) when the teacher is a model sharing the
  tokenizer: `kd_teacher` is a run directory whose final params teach (0 disables).
  """
  steps: int = 0
  batch_size: int = 32
  lr: float = 1e-3
  warmup: int = 20
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  route_share: float = 0.0
  route_level: int | None = None
  num_items: int | None = None
  kd_alpha: float = 0.0
  kd_temperature: float = 1.0
  kd_teacher: str | None = None  # a run directory (its final params) sharing model and tokenizer
  microbatches: int = 1  # gradient accumulation inside the step (same loss, less memory)
  # each batch from one length bucket (`data.pipeline.sft_batches`): with route_share > 0 a few
  # items with routes no longer pad every batch to their length
  group_by_bucket: bool = False
  # Convergence (`check_convergence`): validate every N steps (0: never), stop after `patience`
  # validations without a `min_delta` gain (0: never), end with the best or the last params.
  eval_every: int = 0
  patience: int = 0
  min_delta: float = 0.0
  select: str = "best"

  def __post_init__(self):
    for name in ("steps", "warmup", "weight_decay"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"sft.{name}={getattr(self, name)} must be >= 0")
    for name in ("batch_size", "lr", "grad_clip", "kd_temperature"):
      if not getattr(self, name) > 0:
        raise ValueError(f"sft.{name}={getattr(self, name)} must be > 0")
    if self.num_items is not None and self.num_items <= 0:
      raise ValueError(f"sft.num_items={self.num_items} must be > 0 (or none: all items)")
    if self.microbatches < 1 or self.batch_size % self.microbatches:
      raise ValueError(f"sft.microbatches={self.microbatches} must divide sft.batch_size="
                       f"{self.batch_size}")
    if not 0.0 <= self.route_share <= 1.0:
      raise ValueError(f"sft.route_share must be in [0, 1], got {self.route_share}")
    if self.route_level is not None and not (self.route_level >= 0 and self.route_share > 0):
      raise ValueError(f"sft.route_level={self.route_level} needs a level >= 0 and "
                       f"sft.route_share > 0 (got {self.route_share})")
    if not 0.0 <= self.kd_alpha <= 1.0:
      raise ValueError(f"sft.kd_alpha must be in [0, 1], got {self.kd_alpha}")
    check_convergence(self, "sft")


SELECT = ("best", "last")


def check_convergence(cfg, prefix: str) -> None:
  """One-line errors for a stage's `eval_every`, `patience`, `min_delta` and `select`."""
  for name in ("eval_every", "patience", "min_delta"):
    if not getattr(cfg, name) >= 0:
      raise ValueError(f"{prefix}.{name}={getattr(cfg, name)} must be >= 0")
  if cfg.select not in SELECT:
    raise ValueError(f"{prefix}.select={cfg.select!r}; choose best or last")
  if cfg.patience and not cfg.eval_every:
    raise ValueError(f"{prefix}.patience={cfg.patience} counts validations: set "
                     f"{prefix}.eval_every > 0 too")
