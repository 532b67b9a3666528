"""RL stages' options: GRPO-family RL with MRPV and EAAI, and RFT."""

from __future__ import annotations

import dataclasses

from realm_jax.rl import eaai, losses, mrpv


@dataclasses.dataclass(frozen=True)
class RFTConfig:
  """Rejection-sampling fine-tuning: keep the model's own correct samples."""
  rounds: int = 0
  questions: int = 256
  samples_per_question: int = 4
  temperature: float = 1.0
  steps_per_round: int = 100
  batch_size: int = 32
  lr: float = 5e-4


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """GRPO-family RL with MRPV routes and the EAAI schedule (METHOD §2, §3, §5).

  routes: 'eaai' (scheduled by `eaai`), 'always' (CoT-synthesizer style),
  'never' (plain GRPO). negatives: False keeps only positive routes (ablation).
  """
  steps: int = 0
  batch_prompts: int = 8
  group_size: int = 4
  lr: float = 3e-4
  warmup: int = 5
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  num_inner_updates: int = 1
  num_minibatches: int = 1
  microbatches: int = 1  # gradient accumulation inside each update (same loss, less memory)
  max_new_tokens: int = 160
  temperature: float = 1.0
  normalize_std: bool = True
  filter_zero_variance: bool = False
  mask_truncated: bool = False
  routes: str = "eaai"
  negatives: bool = True
  loss: losses.LossConfig = losses.LossConfig(kl_coef=0.04)
  mrpv: mrpv.MRPVConfig = mrpv.MRPVConfig()
  eaai: eaai.EAAIConfig = eaai.EAAIConfig()

  def __post_init__(self):
    if self.routes not in ("eaai", "always", "never"):
      raise ValueError(f"rl.routes={self.routes!r}; choose eaai, always or never")
    if self.group_size < 2:
      raise ValueError(f"rl.group_size={self.group_size}: group-relative advantages need >= 2")
    n = self.batch_prompts * self.group_size
    if n % self.num_minibatches:
      raise ValueError(
          f"rl.batch_prompts*group_size={n} is not divisible by rl.num_minibatches="
          f"{self.num_minibatches}; pick a divisor of {n}")
    if (n // self.num_minibatches) % self.group_size:
      raise ValueError(
          f"each minibatch ({n // self.num_minibatches} completions) must hold whole groups of "
          f"rl.group_size={self.group_size}; lower rl.num_minibatches")
    if self.num_inner_updates < 1:
      raise ValueError("rl.num_inner_updates must be >= 1")
    if self.microbatches < 1 or (n // self.num_minibatches) % self.microbatches:
      raise ValueError(
          f"rl.microbatches={self.microbatches} must divide the {n // self.num_minibatches} "
          f"completions of an update (batch_prompts*group_size/num_minibatches)")
