"""MRPV, multi-route process verification: routes, prompts, verdicts, margins.

Conventions
- A route is an external chain of thought; its label is True (positive: its
  final answer is correct) or False (negative). Routes shown in a prompt are
  named "Route A", "Route B", ... in the order the caller gives them.
- Verdicts are int8: 1 = "correct", 0 = "wrong", -1 = missing/ambiguous.
- Host-side pieces (sampling, prompt text, parsing) use numpy and a
  `numpy.random.Generator`; the margins are jnp and run inside the jitted step.
- Axis legend: B prompts (or completions), K route slots, P/Q positive/negative
  route slots (here P = Q = K with masks).
- The verification reward lives in `rewards.verification_reward`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

ROUTE_LETTERS = string.ascii_uppercase

DEFAULT_ROUTE_TEMPLATE = "Route {label}:\n{route}"
DEFAULT_WITH_ROUTES_TEMPLATE = (
    "{question}\n\n"
    "Here are some candidate solutions written by others. Some may be wrong.\n\n"
    "{routes}\n\n"
    "Check each route's reasoning process step by step and say which routes "
    "are correct inside <verify>...</verify>, one verdict per route, for "
    "example <verify>A: correct; B: wrong</verify>. Then solve the problem "
    "yourself inside <think>...</think> and give the final answer inside "
    "<answer>...</answer>.")
DEFAULT_WITHOUT_ROUTES_TEMPLATE = (
    "{question}\n\n"
    "Think step by step inside <think>...</think>, then give the final answer "
    "inside <answer>...</answer>.")


@dataclasses.dataclass(frozen=True)
class MRPVConfig:
  """Multi-route process verification.

  num_routes: K, routes per prompt when routes are shown (EAAI may show fewer).
  min_positive / min_negative: lower bounds per prompt when the pool allows.
  all_same_share: share of route-carrying prompts whose routes are all
    positive or all negative (so "exactly one is right" is not learnable).
  route_template: one route's text; fields {label} and {route}.
  with_routes_template: fields {question} and {routes}.
  without_routes_template: field {question}.
  w_ans, w_ver, w_fmt: reward weights (R = w_ans r_ans + w_ver r_ver +
    w_fmt r_fmt); keys of `reward_weights` match `rewards.default_scorers`.
  contrast_coef: weight of the route-contrast loss (0 disables training on it;
    its margins are still logged). contrast_beta: beta_c in
    -log sigmoid(beta_c * m).
  """
  num_routes: int = 3
  min_positive: int = 1
  min_negative: int = 1
  all_same_share: float = 0.1
  route_template: str = DEFAULT_ROUTE_TEMPLATE
  with_routes_template: str = DEFAULT_WITH_ROUTES_TEMPLATE
  without_routes_template: str = DEFAULT_WITHOUT_ROUTES_TEMPLATE
  w_ans: float = 1.0
  w_ver: float = 0.5
  w_fmt: float = 0.1
  contrast_coef: float = 0.0
  contrast_beta: float = 0.1

  def __post_init__(self):
    if not 1 <= self.num_routes <= len(ROUTE_LETTERS):
      raise ValueError(
          f"MRPVConfig.num_routes must be in [1, {len(ROUTE_LETTERS)}] "
          f"(routes are lettered A..Z), got {self.num_routes}")
    if self.min_positive < 0 or self.min_negative < 0:
      raise ValueError(
          f"MRPVConfig.min_positive/min_negative must be >= 0, got "
          f"{self.min_positive}/{self.min_negative}")
    if self.min_positive + self.min_negative > self.num_routes:
      raise ValueError(
          f"MRPVConfig.min_positive + min_negative = "
          f"{self.min_positive + self.min_negative} exceeds num_routes="
          f"{self.num_routes}; lower a minimum or raise num_routes")
    if not 0.0 <= self.all_same_share <= 1.0:
      raise ValueError(
          f"MRPVConfig.all_same_share must be in [0, 1], got "
          f"{self.all_same_share}")
    for name, fields in (("route_template", ("{label}", "{route}")),
                         ("with_routes_template", ("{question}", "{routes}")),
                         ("without_routes_template", ("{question}",))):
      template = getattr(self, name)
      for field in fields:
        if field not in template:
          raise ValueError(
              f"MRPVConfig.{name} must contain the field {field}: "
              f"{template!r}")
    for name in ("w_ans", "w_ver", "w_fmt", "contrast_coef"):
      value = getattr(self, name)
      if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"MRPVConfig.{name} must be finite and >= 0, got "
                         f"{value}")
    if not self.contrast_beta > 0.0:
      raise ValueError(
          f"MRPVConfig.contrast_beta must be > 0, got {self.contrast_beta}")

  @property
  def reward_weights(self) -> dict[str, float]:
    """Weights keyed like `rewards.default_scorers`."""
    return {"answer": self.w_ans, "verification": self.w_ver,
            "format": self.w_fmt}


def sample_routes(pool_labels: Sequence[bool] | np.ndarray, k: int,
                  cfg: MRPVConfig, rng: np.random.Generator) -> np.ndarray:
  """Indices into the pool of the routes shown with one prompt, shuffled.

  Draws min(k, pool size) distinct routes:
  1. with probability `all_same_share` the prompt is all-same: all positive or
     all negative (a fair coin between the kinds that have >= k routes in the
     pool); when neither kind has enough, fall through to 2.
  2. otherwise take min(min_positive, #pos) positives and
     min(min_negative, #neg) negatives (if these exceed k, a random subset of
     the required slots is kept), then fill the rest uniformly from the
     remaining pool.
  The returned order is a random permutation, so position carries no label.
  With the minima at 1/1, a pool with >= k routes of each kind shows all-positive and
  all-negative sets with probability all_same_share / 2 each. An all-positive set needs
  >= k positives in the pool: a pool with a single positive route (one gold route per
  question) never shows one for k >= 2.
  """
  labels = np.asarray(pool_labels, dtype=bool).reshape(-1)
  if k < 0:
    raise ValueError(f"sample_routes: k must be >= 0, got {k}")
  k = min(k, labels.size)
  if k == 0:
    return np.zeros((0,), np.int64)
  pos = np.flatnonzero(labels)
  neg = np.flatnonzero(~labels)
  if rng.random() < cfg.all_same_share:
    kinds = [ix for ix in (pos, neg) if ix.size >= k]
    if kinds:
      ix = kinds[rng.integers(len(kinds))]
      return rng.permutation(rng.choice(ix, size=k, replace=False))
  required = ([True] * min(cfg.min_positive, pos.size)
              + [False] * min(cfg.min_negative, neg.size))
  required = [required[i] for i in rng.permutation(len(required))[:k]]
  n_pos = sum(required)
  n_neg = len(required) - n_pos
  chosen = np.concatenate([rng.choice(pos, size=n_pos, replace=False),
                           rng.choice(neg, size=n_neg, replace=False)])
  rest = np.setdiff1d(np.arange(labels.size), chosen)
  fill = rng.choice(rest, size=k - chosen.size, replace=False)
  return rng.permutation(np.concatenate([chosen, fill]).astype(np.int64))


def truncate_route(text: str, prefix_fraction: float) -> str:
  """Keep the first share of a route's steps (fade by length).

  Steps are the non-blank lines; the last non-blank line is the final-answer
  line. With fraction 1 the text is returned unchanged. Below 1 the answer
  line is dropped and the first floor(fraction * n_steps) of the other
  n_steps lines are kept, joined by newlines (0 keeps nothing).
  """
  fraction = float(prefix_fraction)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(
        f"truncate_route: prefix_fraction must be in [0, 1], got {fraction}")
  if fraction >= 1.0:
    return text
  steps = [line for line in text.splitlines() if line.strip()][:-1]
  # The small slack keeps e.g. 0.6 * 5 (= 2.9999999999999996) at 3 steps.
  keep = int(math.floor(fraction * len(steps) + 1e-9))
  return "\n".join(steps[:keep])


def build_prompt(question: str, routes: Sequence[str], cfg: MRPVConfig) -> str:
  """The prompt text, with routes lettered A, B, ... in the given order.

  The caller shuffles (`sample_routes` returns a random order) and truncates
  (`truncate_route`). Without routes: `without_routes_template`.
  """
  if not routes:
    return cfg.without_routes_template.format(question=question)
  if len(routes) > len(ROUTE_LETTERS):
    raise ValueError(f"build_prompt: at most {len(ROUTE_LETTERS)} routes, got "
                     f"{len(routes)}")
  blocks = [cfg.route_template.format(label=ROUTE_LETTERS[i], route=r)
            for i, r in enumerate(routes)]
  return cfg.with_routes_template.format(question=question,
                                         routes="\n\n".join(blocks))


_VERIFY_RE = re.compile(r"<verify>(.*?)</verify>", re.DOTALL)
_VERDICT_RE = re.compile(
    r"\b([A-Z])\s*[:=\-]\s*"
    r"((?i:correct|right|valid|incorrect|wrong|invalid))\b")
_POSITIVE_WORDS = ("correct", "right", "valid")


def parse_verdicts(completion: str, num_routes: int) -> np.ndarray:
  """int8[K] verdicts from the first <verify>...</verify> block.

  Inside the block, each `X: word` (X an upper-case route letter, separator
  ':', '=' or '-', anything such as "Route " before X, the word
  case-insensitive) with word in correct/right/valid (-> 1)
  or incorrect/wrong/invalid (-> 0) sets route X's verdict. A route never
  mentioned, mentioned with another word, or given two different verdicts is
  -1 (missing); no block means all -1. Letters beyond K are ignored.
  """
  out = np.full((num_routes,), -1, np.int8)
  block = _VERIFY_RE.search(completion)
  if block is None:
    return out
  seen: dict[int, set[int]] = {}
  for match in _VERDICT_RE.finditer(block.group(1)):
    slot = ROUTE_LETTERS.index(match.group(1).upper())
    if slot < num_routes:
      verdict = int(match.group(2).lower() in _POSITIVE_WORDS)
      seen.setdefault(slot, set()).add(verdict)
  for slot, verdicts in seen.items():
    if len(verdicts) == 1:
      out[slot] = verdicts.pop()
  return out


def parse_verdicts_batch(completions: Sequence[str],
                         num_routes: int) -> np.ndarray:
  """int8[N, K]: `parse_verdicts` of each completion."""
  out = np.full((len(completions), num_routes), -1, np.int8)
  for i, completion in enumerate(completions):
    out[i] = parse_verdicts(completion, num_routes)
  return out


def route_pair_margins(pol_logp_BK: jnp.ndarray, ref_logp_BK: jnp.ndarray,
                       labels_BK: jnp.ndarray, mask_BK: jnp.ndarray
                       ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Margins of every (positive, negative) route pair of each prompt.

      d_bk     = logp_pol(route bk) - logp_ref(route bk)   (sequence log-lik)
      m_bpq    = d_bp - d_bq
      valid_bpq = mask_bp & label_bp & mask_bq & ~label_bq
  This is the batched form of the [B, P, Q] pair tensor: instead of ragged
  positive/negative lists, both P and Q index all K slots and `valid` selects
  the (positive, negative) pairs. The reference is a constant
  (stop_gradient). Returns (margins_BKK float32, pair_mask_BKK bool).
  """
  m_BK = jnp.asarray(mask_BK).astype(bool)
  y_BK = jnp.asarray(labels_BK).astype(bool)
  ref = jax.lax.stop_gradient(ref_logp_BK).astype(jnp.float32)
  d_BK = jnp.where(m_BK, pol_logp_BK.astype(jnp.float32) - ref, 0.0)
  margins_BKK = d_BK[:, :, None] - d_BK[:, None, :]
  pos_BK = m_BK & y_BK
  neg_BK = m_BK & ~y_BK
  pair_mask_BKK = pos_BK[:, :, None] & neg_BK[:, None, :]
  return margins_BKK, pair_mask_BKK


def contrast_metrics(margins_BPQ: jnp.ndarray,
                     pair_mask_BPQ: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Over valid pairs: `margin_mean`, `pair_accuracy` (share with m > 0),
  `num_pairs`. Means are 0 when there is no valid pair."""
  pm = jnp.asarray(pair_mask_BPQ).astype(bool)
  m = jnp.where(pm, margins_BPQ.astype(jnp.float32), 0.0)
  n = jnp.sum(pm).astype(jnp.float32)
  denom = jnp.maximum(n, 1.0)
  return {
      "margin_mean": jnp.sum(m) / denom,
      "pair_accuracy": jnp.sum(pm & (m > 0)).astype(jnp.float32) / denom,
      "num_pairs": n,
  }
