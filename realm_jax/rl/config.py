"""RL stages' options: GRPO-family RL with MRPV and EAAI, and RFT."""

from __future__ import annotations

import dataclasses
import math

from realm_jax.rl import advantages, eaai, losses, mrpv
from realm_jax.train.config import check_convergence


@dataclasses.dataclass(frozen=True)
class RFTConfig:
  """Rejection-sampling fine-tuning: keep the model's own correct samples.

  Each of `rounds` rounds draws `samples_per_question` completions (at `temperature`, at
  most `max_new_tokens` tokens; None: rl.max_new_tokens) of `questions` training
  questions, then runs `steps_per_round` SFT updates of `batch_size` rows on the correct
  ones, at peak `lr` after `warmup` steps (`train.step.lr_schedule`).
  """
  rounds: int = 0
  questions: int = 256
  samples_per_question: int = 4
  temperature: float = 1.0
  steps_per_round: int = 100
  batch_size: int = 32
  lr: float = 5e-4
  warmup: int = 5
  max_new_tokens: int | None = None

  def __post_init__(self):
    for name in ("rounds", "steps_per_round", "temperature", "warmup"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"rft.{name}={getattr(self, name)} must be >= 0")
    if self.max_new_tokens is not None and not self.max_new_tokens > 0:
      raise ValueError(f"rft.max_new_tokens={self.max_new_tokens} must be > 0 (or none: "
                       f"rl.max_new_tokens)")
    for name in ("questions", "samples_per_question", "batch_size", "lr"):
      if not getattr(self, name) > 0:
        raise ValueError(f"rft.{name}={getattr(self, name)} must be > 0")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """GRPO-family RL with MRPV routes and the EAAI schedule (METHOD §2, §3, §5).

  routes: 'eaai' (scheduled by `eaai`), 'always' (CoT-synthesizer style),
  'never' (plain GRPO). negatives: False keeps only positive routes (ablation).
  temperature / top_k / top_p: the sampling distribution q of the rollouts;
    the trainer scores completions under the same q (see `rl.step`).
  advantage: 'grpo' (group-centred, divided by the batch's pooled within-group std, so a
    group split only by a small auxiliary reward gets small advantages), 'grpo_group'
    (classic GRPO: each group by its own std), 'drgrpo' (no std), 'rloo' (leave-one-out
    baseline) or a user function named 'module:fn' / 'path/file.py:fn' (`rl.plugins`).
  policy_loss: 'ppo' (token ratio, clip-higher via loss.clip_high), 'gspo'
    (sequence ratio) or a user function, same naming.
  reward_weights: name -> weight, on top of the MRPV terms
    (`mrpv.reward_weights`: answer, verification, format); a new name adds a
    reward function (built-in name or 'module:fn' / 'path/file.py:fn'), e.g.
    `rl.reward_weights.answer=0.5`. The answer term is always scored (accuracy).
  filter_zero_variance: groups whose rewards are all equal leave the loss;
    with dynamic_sampling_rollouts = n > 0 (DAPO dynamic sampling) up to n more
    rollouts of fresh prompts refill the batch with groups that have signal.
  mask_truncated: completions that hit max_new_tokens leave the loss.
  eval_every / patience / min_delta / select: greedy accuracy without routes on the
    validation slice every N steps (0: never), a stop after `patience` validations
    without a `min_delta` gain (0: never), the best or the last params at the end.
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
  top_k: int = 0
  top_p: float = 1.0
  advantage: str = "grpo"
  policy_loss: str = "ppo"
  reward_weights: dict[str, float] = dataclasses.field(default_factory=dict)
  filter_zero_variance: bool = False
  dynamic_sampling_rollouts: int = 0
  mask_truncated: bool = False
  routes: str = "eaai"
  negatives: bool = True
  eval_every: int = 0
  patience: int = 0
  min_delta: float = 0.0
  select: str = "best"
  loss: losses.LossConfig = losses.LossConfig(kl_coef=0.04)
  mrpv: mrpv.MRPVConfig = mrpv.MRPVConfig()
  eaai: eaai.EAAIConfig = eaai.EAAIConfig()

  def __post_init__(self):
    for name in ("steps", "warmup", "weight_decay", "temperature"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"rl.{name}={getattr(self, name)} must be >= 0")
    for name in ("batch_prompts", "lr", "grad_clip", "num_minibatches", "max_new_tokens"):
      if not getattr(self, name) > 0:
        raise ValueError(f"rl.{name}={getattr(self, name)} must be > 0")
    for name, builtins in (("advantage", advantages.ADVANTAGES), ("policy_loss", losses.LOSSES)):
      value = getattr(self, name)
      if not callable(value) and value not in builtins and ":" not in value:
        raise ValueError(f"rl.{name}={value!r}; choose one of {', '.join(builtins)} or name a "
                         f"function as 'module:function' or 'path/to/file.py:function'")
    for name, w in self.reward_weights.items():
      if not (isinstance(w, (int, float)) and math.isfinite(w)):
        raise ValueError(f"rl.reward_weights.{name}={w!r} must be a finite number")
    if self.dynamic_sampling_rollouts < 0:
      raise ValueError(
          f"rl.dynamic_sampling_rollouts={self.dynamic_sampling_rollouts} must be >= 0")
    if self.dynamic_sampling_rollouts and not self.filter_zero_variance:
      raise ValueError("rl.dynamic_sampling_rollouts > 0 refills filtered groups: set "
                       "rl.filter_zero_variance=true too")
    check_convergence(self, "rl")
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

  def weights(self) -> dict[str, float]:
    """Every reward term's weight: the MRPV terms, then `reward_weights` (overriding/adding).

    Without routes (routes='never') the verification term weighs 0.
    """
    out = {**self.mrpv.reward_weights, **self.reward_weights}
    if self.routes == "never":
      out["verification"] = 0.0
    return out
