"""Paired comparison of two models on the same questions: McNemar's exact test and the
difference in accuracy with its confidence interval.

Both models answer the same N held-out questions, so the comparison is paired:
only the discordant questions carry evidence,

  b = questions A gets right and B gets wrong,
  c = questions B gets right and A gets wrong,

and under "A and B are equally accurate" each discordant question is a fair coin.
McNemar's exact test is the two-sided binomial test of c out of b + c at 1/2:

  p = min(1, 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c))   (p = 1 when b + c = 0).

The difference acc(B) - acc(A) = (c - b) / N has the paired variance
(b + c - (c - b)^2 / N) / N^2; its interval is the normal one, mean +- z * se.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PairedResult:
  """B against A on n paired questions: accuracies, discordant counts, diff, CI, p."""
  n: int
  acc_a: float
  acc_b: float
  a_only: int  # b: A right, B wrong
  b_only: int  # c: B right, A wrong
  diff: float  # acc_b - acc_a
  ci_low: float
  ci_high: float
  p_value: float

  def summary(self, a: str = "A", b: str = "B") -> str:
    return (f"{b} - {a} = {self.diff:+.3f} (95% CI {self.ci_low:+.3f} .. {self.ci_high:+.3f}), "
            f"McNemar p = {self.p_value:.3g}; {self.b_only} questions only {b} answers, "
            f"{self.a_only} only {a} (n = {self.n})")


def mcnemar_exact(a_only: int, b_only: int) -> float:
  """Two-sided exact McNemar p-value from the two discordant counts."""
  if a_only < 0 or b_only < 0:
    raise ValueError(f"discordant counts must be >= 0, got {a_only}, {b_only}")
  n = a_only + b_only
  if n == 0:
    return 1.0
  k = min(a_only, b_only)
  # log-space sum: exact enough for any n an evaluation has
  logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
          for i in range(k + 1)]
  top = max(logs)
  tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
  return min(1.0, 2.0 * tail)


def paired_compare(correct_a: Sequence[bool], correct_b: Sequence[bool],
                   z: float = 1.96) -> PairedResult:
  """B against A from per-question correctness, aligned by question."""
  a = np.asarray(correct_a, bool)
  b = np.asarray(correct_b, bool)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"paired_compare needs two equally long, non-empty 1-D correctness "
                     f"vectors (one entry per question); got shapes {a.shape} and {b.shape}")
  n = int(a.size)
  a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
  diff = (b_only - a_only) / n
  se = math.sqrt(max(a_only + b_only - (b_only - a_only) ** 2 / n, 0.0)) / n
  return PairedResult(n=n, acc_a=float(a.mean()), acc_b=float(b.mean()), a_only=a_only,
                      b_only=b_only, diff=diff, ci_low=diff - z * se, ci_high=diff + z * se,
                      p_value=mcnemar_exact(a_only, b_only))


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
  """Mean over seeds of the per-seed mean paired difference, with its percentile interval."""
  diff: float
  ci_low: float
  ci_high: float
  seeds: int
  questions: int  # in all seeds together


def bootstrap_over_seeds(diffs: Sequence[Sequence[float]], n_boot: int = 10000,
                         seed: int = 0, level: float = 0.95,
                         shared_questions: bool = False) -> BootstrapResult:
  """Two-level bootstrap of a paired difference measured on several seeds.

  `diffs[s][i]` is the difference of two methods on question i of seed s (for
  correctness: -1, 0 or +1). The statistic is the mean over seeds of each seed's
  mean difference. Each replicate draws the seeds with replacement, and questions
  with replacement, so the interval carries both the seed-to-seed spread (training
  noise) and the question sampling. With one seed only the questions are resampled.

  Questions are drawn per seed (each drawn seed its own resample) when every seed was
  tested on its own questions; with `shared_questions` (every seed tested on the same
  questions, in the same order) one question resample serves all seeds of a replicate:
  the seeds do not average the question sampling away, since they share it.
  """
  arrays = [np.asarray(d, np.float64) for d in diffs]
  if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
    raise ValueError("bootstrap_over_seeds needs at least one seed, each a non-empty 1-D "
                     f"vector of per-question differences; got shapes {[a.shape for a in arrays]}")
  if shared_questions and len({a.size for a in arrays}) > 1:
    raise ValueError("bootstrap_over_seeds(shared_questions=True) needs every seed tested on "
                     f"the same questions; got {[a.size for a in arrays]} questions per seed")
  rng = np.random.default_rng(seed)
  n_seeds = len(arrays)
  stat = float(np.mean([a.mean() for a in arrays]))
  if shared_questions:
    idx = rng.integers(0, arrays[0].size, (n_boot, arrays[0].size))
    means = np.stack([a[idx].mean(axis=1) for a in arrays])  # [seed, replicate]
    means = np.broadcast_to(means[:, None, :], (n_seeds, n_seeds, n_boot))
  else:
    # means[s, j, r]: seed s's mean over an independent question resample, for slot j of
    # replicate r (a seed drawn twice in one replicate gets two independent resamples).
    means = np.stack([np.stack([a[rng.integers(0, a.size, (n_boot, a.size))].mean(axis=1)
                                for _ in range(n_seeds)]) for a in arrays])
  picked = (rng.integers(0, n_seeds, (n_boot, n_seeds)) if n_seeds > 1
            else np.zeros((n_boot, 1), int))
  reps = means[picked, np.arange(n_seeds)[None, :], np.arange(n_boot)[:, None]].mean(axis=1)
  tail = (1.0 - level) / 2
  lo, hi = np.quantile(reps, [tail, 1.0 - tail])
  return BootstrapResult(diff=stat, ci_low=float(lo), ci_high=float(hi), seeds=n_seeds,
                         questions=int(sum(a.size for a in arrays)))
