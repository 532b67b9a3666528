"""Figures written to PNG files.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot), so
nothing touches matplotlib's global backend or figure registry and the code
runs headless (PNG output goes through Agg).
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from realm_jax import eaai


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
