"""Figures written to PNG files.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so
nothing touches matplotlib's global backend or figure registry and the code
runs headless (PNG output goes through Agg).
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from realm_jax.rl import eaai
from realm_jax.train import metrics


def plot_schedule(cfg: eaai.EAAIConfig, path: str | os.PathLike,
                  accuracy_curve: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> str:
  """Plot the EAAI schedule over steps 0 .. total_steps - 1 into a PNG.

  Top panel: p_routes and prefix_fraction (left axis, [0, 1]) and, when given,
  `accuracy_curve = (steps, accuracy)` overlaid; bottom panel: num_routes.
  Returns the path written.
  """
  steps = np.arange(cfg.total_steps)
  p_routes, num_routes, prefix = (np.asarray(x) for x in
                                  eaai.external_signal(steps, cfg))
  fig = Figure(figsize=(7, 5))
  top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
  top.plot(steps, p_routes, label="p_routes")
  top.plot(steps, prefix, label="prefix_fraction", linestyle="--")
  if accuracy_curve is not None:
    acc_steps, acc = (np.asarray(x) for x in accuracy_curve)
    top.plot(acc_steps, acc, label="accuracy", marker=".", linestyle=":")
  top.set_ylim(-0.02, 1.02)
  top.set_ylabel("share")
  top.legend(loc="best")
  top.set_title(f"EAAI schedule: {cfg.shape}, start={cfg.start}, "
                f"end={cfg.end}")
  bottom.step(steps, num_routes, where="post", color="tab:green")
  bottom.set_ylim(-0.2, cfg.max_routes + 0.2)
  bottom.set_ylabel("num_routes")
  bottom.set_xlabel("RL step")
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=100)
  return str(path)


def _smooth(y: np.ndarray, window: int = 5) -> np.ndarray:
  if y.size < window:
    return y
  kernel = np.ones(window) / window
  return np.convolve(np.pad(y, (window // 2, window - 1 - window // 2), mode="edge"), kernel,
                     mode="valid")


VALID_KEY = "valid_accuracy"  # `train.loop.VALID_METRIC`, as the stages log it


def validation_curves(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
  """{phase: (steps, validation accuracies)} of the metrics rows that hold one, in phase order."""
  out: dict[str, tuple[list[int], list[float]]] = {}
  for r in rows:
    if VALID_KEY in r and "phase" in r:
      steps, values = out.setdefault(r["phase"], ([], []))
      steps.append(int(r["step"]))
      values.append(float(r[VALID_KEY]))
  return out


def _plot_validation(ax, rows: list[dict]) -> None:
  """Validation accuracy of each phase against its steps, as logged (unsmoothed)."""
  curves = validation_curves(rows)
  for phase, (steps, values) in curves.items():
    ax.plot(steps, values, marker="o", label=phase)
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel("step (of each phase)")
  ax.set_ylabel("greedy accuracy without routes")
  ax.set_title("validation slice" if curves else "validation slice (not validated)")
  if curves:
    ax.legend(loc="best")


def plot_training(workdir: str | os.PathLike) -> list[str]:
  """Training curves from `workdir/metrics.jsonl` into PNGs; returns the paths.

  training_curves.png: supervised losses per phase, RL reward and accuracy
  (with and without routes, smoothed over 5 steps), and each phase's
  validation accuracy (`validation_curves`, as logged). eaai_accuracy.png: the
  route share actually shown against autonomous (no-route) accuracy.
  """
  rows = metrics.read_metrics(str(workdir))
  written = []
  sup = [r for r in rows if r.get("phase") != "rl" and "loss" in r]
  rl = [r for r in rows if r.get("phase") == "rl"]
  fig = Figure(figsize=(16, 4))
  left, right, valid = fig.subplots(1, 3)
  _plot_validation(valid, rows)
  offset = 0
  for phase in dict.fromkeys(r["phase"] for r in sup):
    pr = [r for r in sup if r["phase"] == phase]
    left.plot([offset + r["step"] for r in pr], [r["loss"] for r in pr], label=phase)
    offset += max(r["step"] for r in pr) + 1
  left.set_xlabel("supervised step (phases in order)")
  left.set_ylabel("loss")
  left.set_title("supervised stages")
  if sup:
    left.legend()
  if rl:
    steps = np.array([r["step"] for r in rl])
    for key, label in (("reward", "reward"), ("accuracy", "accuracy (all prompts)"),
                       ("accuracy_no_routes", "accuracy without routes"),
                       ("accuracy_routes", "accuracy with routes")):
      y = np.array([r.get(key, np.nan) for r in rl], float)
      ok = np.isfinite(y)
      if ok.any():
        right.plot(steps[ok], _smooth(y[ok]), label=label)
    right.legend(loc="best")
  right.set_xlabel("RL step")
  right.set_title("RL (smoothed)")
  fig.tight_layout()
  path = os.path.join(workdir, "training_curves.png")
  fig.savefig(path, format="png", dpi=100)
  written.append(path)
  if rl:
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    steps = np.array([r["step"] for r in rl])
    ax.plot(steps, [r["p_routes"] for r in rl], label="share of prompts with routes", alpha=0.6)
    y = np.array([r.get("accuracy_no_routes", np.nan) for r in rl], float)
    ok = np.isfinite(y)
    if ok.any():
      ax.plot(steps[ok], _smooth(y[ok]), label="accuracy without routes (smoothed)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("RL step")
    ax.legend(loc="best")
    ax.set_title("EAAI: routes fade, autonomy rises")
    fig.tight_layout()
    path = os.path.join(workdir, "eaai_accuracy.png")
    fig.savefig(path, format="png", dpi=100)
    written.append(path)
  return written
