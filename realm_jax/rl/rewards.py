"""Reward scorers (host side, numpy): a batch in, float32[N] out.

Conventions
- A *batch* is a mapping from names to per-item sequences, every one of
  length N (one entry per completion): `completions` list[str], `golds`
  list[str], `routes_shown` bool[N], `verdicts` int8[N, K], `route_labels`
  bool[N, K], `route_mask` bool[N, K]. Prompt-level arrays ([B, K]) are
  repeated over the G samples (`np.repeat(x_BK, G, axis=0)`) beforehand.
- A *scorer* is `fn(batch) -> float32[N]`; scorers stack into R_NR (axis R:
  reward terms), columns named by the scorer dict's keys.
- A scorer that raises on a strange completion scores 0 for that item and
  is counted (`safe_scorer`); a malformed output shape is a bug and raises.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Batch = Mapping[str, Any]
Scorer = Callable[[Batch], np.ndarray]


def answer_reward(completions: Sequence[str],
                  golds: Sequence[str]) -> np.ndarray:
  """r_ans[i] = 1[is_equivalent(extract_answer(completion_i), gold_i)].

  A completion with no extractable answer scores 0.
  """
  # Imported here: the verifier is only needed once rewards are scored.
  from realm_jax.data import answers
  if len(completions) != len(golds):
    raise ValueError(f"answer_reward: {len(completions)} completions but "
                     f"{len(golds)} golds")
  out = np.zeros((len(completions),), np.float32)
  for i, (completion, gold) in enumerate(zip(completions, golds)):
    predicted = answers.extract_answer(completion)
    if predicted is not None and answers.is_equivalent(predicted, gold):
      out[i] = 1.0
  return out


# Tag contents may not contain any of the three tags (so each appears once).
_BODY = r"((?:(?!</?(?:verify|think|answer)>).)+)"
FORMAT_WITH_ROUTES_RE = re.compile(
    rf"\s*<verify>{_BODY}</verify>\s*<think>{_BODY}</think>"
    rf"\s*<answer>{_BODY}</answer>\s*", re.DOTALL)
FORMAT_WITHOUT_ROUTES_RE = re.compile(
    rf"\s*<think>{_BODY}</think>\s*<answer>{_BODY}</answer>\s*", re.DOTALL)


def follows_format(completion: str, routes_shown: bool) -> bool:
  """Whether one completion follows the MRPV format.

  The whole completion must match (`re.fullmatch`, DOTALL):
    routes shown:  \\s*<verify>X</verify>\\s*<think>X</think>\\s*<answer>X</answer>\\s*
    no routes:     \\s*<think>X</think>\\s*<answer>X</answer>\\s*
  where each X is non-blank and contains none of the tags <verify>, <think>,
  <answer> or their closing forms (each tag appears exactly once, in this
  order, with only whitespace between and around the blocks). A <verify>
  block without routes is a format error.
  """
  pattern = FORMAT_WITH_ROUTES_RE if routes_shown else FORMAT_WITHOUT_ROUTES_RE
  match = pattern.fullmatch(completion)
  return match is not None and all(g.strip() for g in match.groups())


def format_reward(completions: Sequence[str],
                  routes_shown: np.ndarray) -> np.ndarray:
  """r_fmt[i] = 1[follows_format(completion_i, routes_shown_i)]."""
  shown = np.asarray(routes_shown, bool).reshape(-1)
  if shown.size != len(completions):
    raise ValueError(f"format_reward: {len(completions)} completions but "
                     f"routes_shown has {shown.size} entries")
  return np.array([follows_format(c, bool(s))
                   for c, s in zip(completions, shown)], np.float32)


def verification_reward(verdicts_NK: np.ndarray, labels_NK: np.ndarray,
                        route_mask_NK: np.ndarray) -> np.ndarray:
  """r_ver[i] = mean over shown routes k of 1[verdict_ik == label_ik].

      r_ver_i = sum_k s_ik 1[v_ik == y_ik] / sum_k s_ik,   0 if sum_k s_ik = 0
  with s the route mask, y in {0, 1} and v in {1, 0, -1}: a missing verdict
  (-1) never equals a label, so it counts as wrong.
  """
  v = np.asarray(verdicts_NK, np.int64)
  y = np.asarray(labels_NK).astype(bool).astype(np.int64)
  s = np.asarray(route_mask_NK).astype(bool)
  if not v.shape == y.shape == s.shape or v.ndim != 2:
    raise ValueError(
        f"verification_reward: verdicts {v.shape}, labels {y.shape} and "
        f"route_mask {s.shape} must all be [N, K]")
  hits = np.sum((v == y) & s, axis=1)
  shown = np.sum(s, axis=1)
  return (hits / np.maximum(shown, 1)).astype(np.float32)


def default_scorers() -> dict[str, Scorer]:
  """The MRPV reward terms, keyed like `MRPVConfig.reward_weights`."""
  return {
      "answer": lambda b: answer_reward(b["completions"], b["golds"]),
      "verification": lambda b: verification_reward(
          b["verdicts"], b["route_labels"], b["route_mask"]),
      "format": lambda b: format_reward(b["completions"], b["routes_shown"]),
  }


def _batch_size(batch: Batch) -> int:
  sizes = {name: len(value) for name, value in batch.items()}
  if not sizes:
    raise ValueError("reward batch is empty: no fields")
  n = next(iter(sizes.values()))
  if any(size != n for size in sizes.values()):
    raise ValueError(f"reward batch fields must all have length N; got "
                     f"{sizes}")
  return n


def _item(batch: Batch, i: int) -> dict[str, Any]:
  return {name: value[i:i + 1] for name, value in batch.items()}


def _check_scores(name: str, scores: Any, n: int) -> np.ndarray:
  scores = np.array(scores, np.float32)  # a copy: NaNs are zeroed in place
  if scores.shape != (n,):
    raise ValueError(f"scorer {name!r} returned shape {scores.shape}, "
                     f"expected ({n},)")
  return scores


def safe_scorer(fn: Scorer, name: str = "scorer"
                ) -> Callable[[Batch], tuple[np.ndarray, int]]:
  """Wrap a scorer: `wrapped(batch) -> (float32[N], num_errors)`.

  The batch is scored at once; if that raises, each item is scored alone and
  an item that raises (or scores NaN/inf) gets 0 and is counted in
  num_errors. A wrong output shape raises ValueError (a bug, not a strange
  completion).
  """

  def wrapped(batch: Batch) -> tuple[np.ndarray, int]:
    n = _batch_size(batch)
    try:
      raw = fn(batch)
    except Exception:  # Any failure: find the offending items one by one.
      raw = None
    errors = 0
    if raw is not None:
      scores = _check_scores(name, raw, n)
    else:
      scores = np.zeros((n,), np.float32)
      for i in range(n):
        try:
          raw_i = fn(_item(batch, i))
        except Exception:  # The strange item scores 0 and is counted.
          errors += 1
          continue
        scores[i] = _check_scores(name, raw_i, 1)[0]
    bad = ~np.isfinite(scores)
    scores[bad] = 0.0
    return scores, errors + int(np.sum(bad))

  return wrapped


def reward_matrix(scorers: Mapping[str, Scorer], batch: Batch
                  ) -> tuple[np.ndarray, list[str], dict[str, float]]:
  """Score a batch with every scorer (each made safe): (R_NR, names, metrics).

  R_NR[:, r] is scorer names[r]'s float32[N]. Metrics per column:
  `reward/{name}` (mean) and `reward/{name}_errors` (items that raised and
  scored 0).
  """
  n = _batch_size(batch)
  names = list(scorers)
  columns, metrics = [], {}
  for name in names:
    scores, errors = safe_scorer(scorers[name], name)(batch)
    columns.append(scores)
    metrics[f"reward/{name}"] = float(np.mean(scores)) if n else 0.0
    metrics[f"reward/{name}_errors"] = float(errors)
  r_NR = (np.stack(columns, axis=1) if columns
          else np.zeros((n, 0), np.float32))
  return r_NR.astype(np.float32), names, metrics


def combine(r_NR: np.ndarray, weights_R: Sequence[float]) -> np.ndarray:
  """R_N = sum_r w_r R_Nr, float32. `weights_R` follows the column order."""
  r_NR = np.asarray(r_NR, np.float32)
  w = np.asarray(weights_R, np.float32).reshape(-1)
  if r_NR.ndim != 2 or w.shape[0] != r_NR.shape[1]:
    raise ValueError(f"combine: {w.shape[0]} weights for reward matrix of "
                     f"shape {r_NR.shape}")
  return r_NR @ w
