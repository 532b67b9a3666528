"""Rewards (host side, numpy): completions in, float32[N] out.

Conventions
- A *reward function* is `f(prompts, completions, **columns) -> float32[N]`:
  `prompts` and `completions` are list[str] of length N (one entry per
  completion; a prompt repeats over its G samples) and every column has N
  rows. The RL loop passes these columns (a function takes the ones it needs
  and `**_` for the rest):
    golds         list[str]    the gold answer of the row's question
    routes_shown  bool[N]      the prompt carried MRPV routes
    verdicts      int8[N, K]   verdicts parsed from the completion (1 correct,
                               0 wrong, -1 missing; `mrpv.parse_verdicts_batch`)
    route_labels  bool[N, K]   whether shown route k is positive
    route_mask    bool[N, K]   slot k holds a shown route
  Prompt-level arrays ([B, K]) are repeated over the G samples beforehand.
- Functions stack into R_NR (axis R: reward terms), columns named by the
  keys of the mapping; `combine` weighs them. The built-ins are
  `default_scorers()`; `rl.reward_weights` names others (see `rl.plugins`).
- A function that raises on a strange completion scores 0 for that item and
  is counted (`safe_scorer`); a malformed output shape is a bug and raises.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from realm_jax.data import answers

Columns = Mapping[str, Any]
RewardFn = Callable[..., np.ndarray]


def answer_reward(prompts: Sequence[str], completions: Sequence[str], golds: Sequence[str],
                  **_) -> np.ndarray:
  """r_ans[i] = 1[answers.is_correct(completion_i, gold_i)] (extract, then compare).

  A completion with no extractable answer scores 0.
  """
  if len(completions) != len(golds):
    raise ValueError(f"answer_reward: {len(completions)} completions but "
                     f"{len(golds)} golds")
  return np.array([answers.is_correct(c, g) for c, g in zip(completions, golds)], np.float32)


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


def format_reward(prompts: Sequence[str], completions: Sequence[str],
                  routes_shown: np.ndarray, **_) -> np.ndarray:
  """r_fmt[i] = 1[follows_format(completion_i, routes_shown_i)]."""
  shown = np.asarray(routes_shown, bool).reshape(-1)
  if shown.size != len(completions):
    raise ValueError(f"format_reward: {len(completions)} completions but "
                     f"routes_shown has {shown.size} entries")
  return np.array([follows_format(c, bool(s))
                   for c, s in zip(completions, shown)], np.float32)


def verification_reward(prompts: Sequence[str], completions: Sequence[str],
                        verdicts: np.ndarray, route_labels: np.ndarray,
                        route_mask: np.ndarray, **_) -> np.ndarray:
  """r_ver[i] = mean over shown routes k of 1[verdict_ik == label_ik].

      r_ver_i = sum_k s_ik 1[v_ik == y_ik] / sum_k s_ik,   0 if sum_k s_ik = 0
  with s the route mask, y in {0, 1} and v in {1, 0, -1}: a missing verdict
  (-1) never equals a label, so it counts as wrong.
  """
  v = np.asarray(verdicts, np.int64)
  y = np.asarray(route_labels).astype(bool).astype(np.int64)
  s = np.asarray(route_mask).astype(bool)
  if not v.shape == y.shape == s.shape or v.ndim != 2:
    raise ValueError(
        f"verification_reward: verdicts {v.shape}, labels {y.shape} and "
        f"route_mask {s.shape} must all be [N, K]")
  hits = np.sum((v == y) & s, axis=1)
  shown = np.sum(s, axis=1)
  return (hits / np.maximum(shown, 1)).astype(np.float32)


def default_scorers() -> dict[str, RewardFn]:
  """The built-in reward functions: the MRPV terms, keyed like `MRPVConfig.reward_weights`."""
  return {"answer": answer_reward, "verification": verification_reward, "format": format_reward}


def _batch_size(prompts: Sequence[str], completions: Sequence[Any], columns: Columns) -> int:
  sizes = {"prompts": len(prompts), "completions": len(completions),
           **{name: len(value) for name, value in columns.items()}}
  n = len(completions)
  if any(size != n for size in sizes.values()):
    raise ValueError(f"reward inputs must all have length N; got {sizes}")
  return n


def _check_scores(name: str, scores: Any, n: int) -> np.ndarray:
  scores = np.array(scores, np.float32)  # a copy: NaNs are zeroed in place
  if scores.shape != (n,):
    raise ValueError(f"reward {name!r} returned shape {scores.shape}, "
                     f"expected ({n},)")
  return scores


def safe_scorer(fn: RewardFn, name: str = "reward"
                ) -> Callable[[Sequence[str], Sequence[str], Columns], tuple[np.ndarray, int]]:
  """Wrap a reward: `wrapped(prompts, completions, columns) -> (float32[N], num_errors)`.

  The batch is scored at once; if that raises, each item is scored alone and
  an item that raises (or scores NaN/inf) gets 0 and is counted in
  num_errors. A wrong output shape raises ValueError (a bug, not a strange
  completion).
  """

  def wrapped(prompts, completions, columns) -> tuple[np.ndarray, int]:
    n = _batch_size(prompts, completions, columns)
    try:
      raw = fn(prompts, completions, **columns)
    except Exception:  # Any failure: find the offending items one by one.
      raw = None
    errors = 0
    if raw is not None:
      scores = _check_scores(name, raw, n)
    else:
      scores = np.zeros((n,), np.float32)
      for i in range(n):
        try:
          raw_i = fn(prompts[i:i + 1], completions[i:i + 1],
                     **{k: v[i:i + 1] for k, v in columns.items()})
        except Exception:  # The strange item scores 0 and is counted.
          errors += 1
          continue
        scores[i] = _check_scores(name, raw_i, 1)[0]
    bad = ~np.isfinite(scores)
    scores[bad] = 0.0
    return scores, errors + int(np.sum(bad))

  return wrapped


def reward_matrix(reward_fns: Mapping[str, RewardFn], prompts: Sequence[str],
                  completions: Sequence[str], columns: Columns
                  ) -> tuple[np.ndarray, list[str], dict[str, float]]:
  """Score a batch with every reward (each made safe): (R_NR, names, metrics).

  R_NR[:, r] is reward names[r]'s float32[N]. Metrics per column:
  `reward/{name}` (mean) and `reward/{name}_errors` (items that raised and
  scored 0).
  """
  n = _batch_size(prompts, completions, columns)
  names = list(reward_fns)
  out, metrics = [], {}
  for name in names:
    scores, errors = safe_scorer(reward_fns[name], name)(prompts, completions, columns)
    out.append(scores)
    metrics[f"reward/{name}"] = float(np.mean(scores)) if n else 0.0
    metrics[f"reward/{name}_errors"] = float(errors)
  r_NR = (np.stack(out, axis=1) if out else np.zeros((n, 0), np.float32))
  return r_NR.astype(np.float32), names, metrics


def group_signal(r_NR: np.ndarray, names: Sequence[str], weights_R: Sequence[float],
                 group_size: int) -> dict[str, float]:
  """Which reward columns move the group-relative advantage, shares over the B groups.

      signal/{name}_varies  share of groups whose column `name` is not constant over G
      signal/{name}_only    share of groups where the weighted column w_r R_r varies and every
                            other weighted column is constant: the group's whole signal
  A column that is constant within a group adds the same amount to its G rewards, which
  group-relative advantages subtract, so it changes nothing there; `_only` counts the
  groups whose task reward would be constant without that column (A = 0, unless
  `loss.kl_in_reward` subtracts a varying KL penalty). A zero weight never varies once
  weighted, so its `_only` is 0 while `_varies` still reports the raw column. These are
  shares of groups, not of the gradient: a group moved only by a small weight gets a small
  advantage under a pooled std (advantage `grpo`), a unit one under a per-group std
  (`grpo_group`).
  """
  r_NR = np.asarray(r_NR, np.float32)
  w = np.asarray(weights_R, np.float32).reshape(-1)
  if r_NR.ndim != 2 or r_NR.shape[1] != len(names) or w.shape[0] != len(names):
    raise ValueError(f"group_signal: reward matrix {r_NR.shape}, {len(names)} names and "
                     f"{w.shape[0]} weights")
  if group_size < 1 or r_NR.shape[0] % group_size:
    raise ValueError(f"group_signal: {r_NR.shape[0]} rows are not whole groups of "
                     f"{group_size}")
  r_BGR = r_NR.reshape(-1, group_size, r_NR.shape[1])
  varies_BR = np.any(r_BGR != r_BGR[:, :1], axis=1)
  moves_BR = varies_BR & (w != 0)[None, :]
  alone_BR = moves_BR & (moves_BR.sum(axis=1, keepdims=True) == 1)
  metrics = {}
  for r, name in enumerate(names):
    metrics[f"signal/{name}_varies"] = float(varies_BR[:, r].mean()) if len(r_BGR) else 0.0
    metrics[f"signal/{name}_only"] = float(alone_BR[:, r].mean()) if len(r_BGR) else 0.0
  return metrics


def combine(r_NR: np.ndarray, weights_R: Sequence[float]) -> np.ndarray:
  """R_N = sum_r w_r R_Nr, float32. `weights_R` follows the column order."""
  r_NR = np.asarray(r_NR, np.float32)
  w = np.asarray(weights_R, np.float32).reshape(-1)
  if r_NR.ndim != 2 or w.shape[0] != r_NR.shape[1]:
    raise ValueError(f"combine: {w.shape[0]} weights for reward matrix of "
                     f"shape {r_NR.shape}")
  return r_NR @ w
