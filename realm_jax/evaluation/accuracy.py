"""Evaluation: greedy accuracy, pass@k and maj@k, with routes and without.

`evaluate_params` is the measurement (host IO only through the sampler);
`results_table` the Markdown summary `realm-jax eval` writes to eval.md.

Confidence intervals: Wilson 95% intervals over questions for one run
(binomial); `experiments/reproduce.py` reports t intervals over seeds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from realm_jax.data import answers
from realm_jax.evaluation import report
from realm_jax.rl import corpus, mrpv
from realm_jax.model import sampling
from realm_jax.data.records import Example
from realm_jax.train import generation


# eval.routes / eval.sample_routes -> the with_routes values evaluated
ROUTE_SETTINGS = {"both": (False, True), "without": (False,), "with": (True,)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  num_questions: int = 128
  k: int = 4
  temperature: float = 1.0
  max_new_tokens: int = 160
  batch_size: int = 64
  final_only: bool = False  # skip evaluating the run's starting point
  # Test questions at another difficulty level than the run trained on (built-in and user
  # domains; None: the run's own level). `realm-jax eval` then writes eval_d{N}.json / .md.
  difficulty: int | None = None
  # Which test settings to run ("both", "without" or "with" routes shown), and in which of
  # them to also sample k completions for pass@k / maj@k (the costliest part at k > 1)
  routes: str = "both"
  sample_routes: str = "both"

  def __post_init__(self):
    for name in ("routes", "sample_routes"):
      if getattr(self, name) not in ROUTE_SETTINGS:
        raise ValueError(f"eval.{name}={getattr(self, name)!r} must be one of "
                         f"{', '.join(ROUTE_SETTINGS)}")
    for name in ("num_questions", "k", "max_new_tokens", "batch_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"eval.{name}={getattr(self, name)} must be > 0")
    if self.difficulty is not None and self.difficulty < 0:
      raise ValueError(f"eval.difficulty={self.difficulty} must be >= 0 (or none)")
    if not self.temperature >= 0:
      raise ValueError(f"eval.temperature={self.temperature} must be >= 0")


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion."""
  if n == 0:
    return (float("nan"), float("nan"))
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # Clipped: at p = 0 or 1 rounding leaves the exact bound 0 / 1 off by ~1e-17.
  return (max(0.0, centre - half), min(1.0, centre + half))


def majority_vote(predictions: Sequence[str | None]) -> str | None:
  """Most common extracted answer; equivalent answers vote together (first seen wins ties)."""
  groups: list[list[str]] = []
  for p in predictions:
    if p is None:
      continue
    for g in groups:
      if answers.is_equivalent(p, g[0]):
        g.append(p)
        break
    else:
      groups.append([p])
  if not groups:
    return None
  return max(groups, key=len)[0]


def eval_prompts(examples: Sequence[Example], mrpv_cfg: mrpv.MRPVConfig, with_routes: bool,
                 seed: int) -> tuple[list[str], list[list[bool]], list[list[str]]]:
  """(prompts, labels of the shown routes, shown route texts) of an evaluation: question i's
  routes drawn with `default_rng([seed, i])`, so every model (and the "copy a shown route"
  baseline) sees the same ones."""
  prompts, labels, shown = [], [], []
  for i, ex in enumerate(examples):
    rng = np.random.default_rng([seed, i])
    p, lab, texts = corpus.route_prompt(ex, rng, mrpv_cfg,
                                        mrpv_cfg.num_routes if with_routes else 0)
    prompts.append(p)
    labels.append(lab)
    shown.append(texts)
  return prompts, labels, shown


def evaluate_params(params: Any, model_cfg, tok, examples: Sequence[Example], cfg: EvalConfig,
                    mrpv_cfg: mrpv.MRPVConfig, *, with_routes: bool, seed: int = 0,
                    chat: bool = False, sample: bool = True) -> dict[str, float]:
  """Greedy accuracy (per question too) on `examples`; route verdicts when routes are shown;
  with `sample` and k > 1, pass@k and maj@k over k sampled completions."""
  prompts, labels, _ = eval_prompts(examples, mrpv_cfg, with_routes, seed)
  golds = [ex.answer for ex in examples]
  n = len(examples)
  stop = tuple(tok.stop_ids)
  greedy = generation.generate_texts(params, model_cfg, tok, prompts,
                         sampling.SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0,
                                                 stop_ids=stop, num_samples=1, pad_id=tok.pad_id),
                         cfg.batch_size, chat, seed)
  greedy_texts = [g[0] for g in greedy]
  correct = np.array([answers.is_correct(t, g) for t, g in zip(greedy_texts, golds)], np.float32)
  # per question, in `examples` order: what paired comparisons of two models read
  res = {"n": n, "accuracy": float(correct.mean()), "correct": [int(c) for c in correct]}
  res["accuracy_ci_low"], res["accuracy_ci_high"] = wilson_interval(float(correct.sum()), n)
  if with_routes:
    K = mrpv_cfg.num_routes
    v = mrpv.parse_verdicts_batch(greedy_texts, K)
    hits = [np.mean([v[i, k] == int(l) for k, l in enumerate(lab)]) for i, lab in enumerate(labels) if lab]
    res["verification_accuracy"] = float(np.mean(hits)) if hits else float("nan")
  if sample and cfg.k > 1:
    bs = max(1, cfg.batch_size // cfg.k)
    samples = generation.generate_texts(params, model_cfg, tok, prompts,
                            sampling.SamplingConfig(max_new_tokens=cfg.max_new_tokens,
                                                    temperature=cfg.temperature, stop_ids=stop,
                                                    num_samples=cfg.k, pad_id=tok.pad_id),
                            bs, chat, seed + 1)
    pass_k = [any(answers.is_correct(t, g) for t in s) for s, g in zip(samples, golds)]
    maj = [majority_vote([answers.extract_answer(t) for t in s]) for s in samples]
    maj_k = [m is not None and answers.is_equivalent(m, g) for m, g in zip(maj, golds)]
    res[f"pass@{cfg.k}"] = float(np.mean(pass_k))
    res[f"maj@{cfg.k}"] = float(np.mean(maj_k))
  return res


def results_table(results: dict[str, dict[str, dict[str, float]]], k: int,
                  baselines: dict[str, dict[str, float]] | None = None) -> str:
  """results[stage][setting] -> metrics; one Markdown row per (stage, setting), then one per
  trivial baseline: baselines[setting][name] -> accuracy (`baselines.trivial_baselines`)."""
  sampled = [f"pass@{k}", f"maj@{k}"] if k > 1 else []  # k = 1: greedy only, no sampled columns
  header = ["model", "routes at test", "accuracy (95% CI)", *sampled, "route verdicts"]
  rows = []
  for stage, settings in results.items():
    for setting, r in settings.items():
      ver = r.get("verification_accuracy")
      rows.append([stage, setting, f"{r['accuracy']:.3f} ({r['accuracy_ci_low']:.3f}-"
                   f"{r['accuracy_ci_high']:.3f})",
                   *[f"{r[name]:.3f}" if name in r else "" for name in sampled],  # not sampled
                   "" if ver is None else f"{ver:.3f}"])
  rows += report.baseline_rows(baselines or {}, len(header))
  return report.markdown_table(header, rows)
