"""Had a run stopped improving when it ended? Read from the validation curve the
reproduction keeps per run (`run_summary.json`'s `validation`: [phase, step, accuracy] rows).

Per run: its best validation accuracy and the step of it, and the *late gain*: the best of
the validations in the last fifth of its steps minus the best of those before. A late gain
near or below 0 says the curve had flattened; a clearly positive one says the run was still
improving when its schedule ended, so more steps would likely have helped.
"""

from __future__ import annotations

LATE = 0.2  # the share of a run's steps whose validations count as late


def last_phase(curve: list[list]) -> list[tuple[int, float]]:
  """(step, accuracy) of the phase `curve` ends with, by step (a run that trains in two
  phases, such as a resumed base and its SFT, is judged on the one it ends with)."""
  phase = curve[-1][0]
  return sorted((s, a) for p, s, a in curve if p == phase)


def curve_summary(curve: list[list], late: float = LATE) -> dict | None:
  """{best, best_step, last_step, late_gain} of the last phase in `curve` (`last_phase`);
  late_gain is None without a validation both before and inside the late share. None
  without any validation."""
  if not curve:
    return None
  points = last_phase(curve)
  last = points[-1][0]
  best_step, best = max(points, key=lambda p: (p[1], -p[0]))  # the first of equal bests
  cut = (1 - late) * (last + 1)
  early = [a for s, a in points if s + 1 <= cut]
  tail = [a for s, a in points if s + 1 > cut]
  gain = max(tail) - max(early) if early and tail else None
  return {"best": best, "best_step": best_step, "last_step": last, "late_gain": gain}


def per_run(summaries: dict[tuple[int, str], dict]) -> dict[str, dict[str, dict]]:
  """{method: {seed: curve_summary}} from {(seed, method): run_summary} for the runs that
  validated (the base warm-up does not)."""
  out: dict[str, dict[str, dict]] = {}
  for (seed, name), r in sorted(summaries.items()):
    c = curve_summary(r.get("validation") or [])
    if c is not None:
      out.setdefault(name, {})[str(seed)] = c
  return out


def table(conv: dict[str, dict[str, dict]], seeds: int) -> str:
  """Markdown: a row per method, a cell per seed: best (step of it / last step), late gain."""
  lines = ["| run | " + " | ".join(f"seed {s}" for s in range(seeds)) + " |",
           "|---|" + "---|" * seeds]
  for name, by_seed in conv.items():
    cells = []
    for s in range(seeds):
      c = by_seed.get(str(s))
      gain = "" if c is None or c["late_gain"] is None else f", late gain {c['late_gain']:+.3f}"
      cells.append("" if c is None else
                   f"{c['best']:.3f} at {c['best_step'] + 1}/{c['last_step'] + 1}{gain}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def mean_curve(by_seed: dict[int, list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
  """The steps every seed validated at, and the mean accuracy there."""
  steps = sorted(set.intersection(*(set(s for s, _ in pts) for pts in by_seed.values())))
  return steps, [sum(dict(pts)[s] for pts in by_seed.values()) / len(by_seed) for s in steps]


def plot(summaries: dict[tuple[int, str], dict], path: str, skip=("realm_zero",)) -> bool:
  """Validation curves: each seed's SFT start (left) and every method after it, mean over the
  seeds that finished it (right, steps counted from the start; `skip`: ReaLM-Zero starts from
  the base near 0 and would flatten the panel, the table has it). False (nothing written)
  when no run has validated yet."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  curves: dict[str, dict[int, list]] = {}
  for (seed, name), r in sorted(summaries.items()):
    c = r.get("validation") or []
    if c:
      curves.setdefault(name, {})[seed] = [(s + 1, a) for s, a in last_phase(c)]
  if not curves:
    return False
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
  for seed, pts in curves.get("sft", {}).items():
    left.plot(*zip(*pts), marker=".", label=f"seed {seed}")
  left.set(title="SFT start: validation accuracy", xlabel="SFT step", ylabel="accuracy")
  for name, by_seed in curves.items():
    if name == "sft" or name in skip:
      continue
    right.plot(*mean_curve(by_seed), marker=".", label=f"{name} ({len(by_seed)} seeds)")
  right.set(title="after the start: validation accuracy, mean over seeds", xlabel="step")
  for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True
