"""Gathers the evidence runs' paired results into one table (Markdown and JSON).

Each run directory holds `eval.json` (the training level) and, where
`realm-jax eval --workdir DIR eval.difficulty=1` ran, `eval_d1.json`; both hold
the start and the final params on the same test questions and their paired
comparison (McNemar exact p, 95% CI of the difference).

    python -m experiments.evidence_table runs/sweeps/evidence_rl/* runs/evidence_more_sft \
        --control evidence_more_sft --out experiments/results/evidence_rl

`--control RUN` adds each run's final params against that run's final params, paired on
the same questions (the controls of METHOD §6: SFT -> more SFT, SFT -> GRPO).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
from pathlib import Path

from matplotlib.figure import Figure

from realm_jax.evaluation import paired as paired_lib, report
from realm_jax.train.metrics import read_metrics

LEVELS = (("eval.json", "level 0"), ("eval_d1.json", "level 1"))


def _cell(paired: dict | None) -> list[str]:
  if not paired:
    return ["", "", "", ""]
  return [f"{paired['acc_a']:.3f}", f"{paired['acc_b']:.3f}",
          f"{paired['diff']:+.3f} ({paired['ci_low']:+.3f} .. {paired['ci_high']:+.3f})",
          f"{paired['p_value']:.2g}"]


def _finals(path: str) -> dict:
  """setting -> per-question correctness of the run's final params."""
  with open(path) as f:
    results = json.load(f)["results"]
  final = next((v for k, v in results.items() if k.startswith("final")), {})
  return {setting: r["correct"] for setting, r in final.items() if "correct" in r}


def gather(run_dirs: list[str], control: str | None = None) -> list[dict]:
  """Per run: its paired final - start per level, and (with `control`, a run name among them)
  its final - the control's final on the same questions."""
  rows, finals = [], {}
  for d in run_dirs:
    row = {"run": os.path.basename(os.path.normpath(d)), "dir": d}
    with open(os.path.join(d, "run.json")) as f:
      info = json.load(f)
    row["experiment"], row["overrides"] = info["experiment"], info["overrides"]
    for name, level in LEVELS:
      path = os.path.join(d, name)
      if os.path.exists(path):
        with open(path) as f:
          row[level] = json.load(f).get("paired", {})
        finals[row["run"], level] = _finals(path)
    rows.append(row)
  if control is not None:
    if not any(r["run"] == control for r in rows):
      raise SystemExit(f"--control {control}: no such run among {[r['run'] for r in rows]}")
    for row in rows:
      for _, level in LEVELS:
        ours, theirs = finals.get((row["run"], level)), finals.get((control, level))
        if ours and theirs and row["run"] != control:
          row[f"{level} vs {control}"] = {
              s: dataclasses.asdict(paired_lib.paired_compare(theirs[s], ours[s]))
              for s in ours if s in theirs}
  return rows


def table(rows: list[dict], setting: str = "without routes", control: str | None = None) -> str:
  head = ["run"] + [f"{lv} {c}" for _, lv in LEVELS for c in ("start", "final", "final - start",
                                                               "McNemar p")]
  body = [[r["run"]] + [c for _, lv in LEVELS for c in _cell(r.get(lv, {}).get(setting))]
          for r in rows]
  if control is not None:
    head += [f"{lv} final - {control} final (p)" for _, lv in LEVELS]
    for r, line in zip(rows, body):
      for _, lv in LEVELS:
        c = r.get(f"{lv} vs {control}", {}).get(setting)
        line.append(f"{c['diff']:+.3f} ({c['ci_low']:+.3f} .. {c['ci_high']:+.3f}; "
                    f"p {c['p_value']:.2g})" if c else "")
  return report.markdown_table(head, body)


def plot(rows: list[dict], path: Path, setting: str = "without routes") -> None:
  """Left: final - start per run and level with its 95% CI. Right: validation accuracy per
  step of each run's last stage (the start's own value at step 0 where logged)."""
  fig = Figure(figsize=(12, 4.5))
  ax_bar, ax_curve = fig.subplots(1, 2)
  width = 0.8 / len(LEVELS)
  for j, (_, level) in enumerate(LEVELS):
    cmp = [r.get(level, {}).get(setting) for r in rows]
    xs = [i + (j - (len(LEVELS) - 1) / 2) * width for i in range(len(rows))]
    diffs = [c["diff"] if c else 0.0 for c in cmp]
    err = [[c["diff"] - c["ci_low"] if c else 0.0 for c in cmp],
           [c["ci_high"] - c["diff"] if c else 0.0 for c in cmp]]
    ax_bar.bar(xs, diffs, width, yerr=err, capsize=3, label=level)
  ax_bar.axhline(0.0, color="black", linewidth=0.8)
  ax_bar.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=30, ha="right",
                    fontsize=8)
  ax_bar.set_ylabel(f"greedy accuracy {setting}: final - start")
  ax_bar.set_title("paired difference on the test questions (95% CI)")
  ax_bar.legend(fontsize=8)
  for r in rows:
    history = read_metrics(r["dir"])
    phase = history[-1].get("phase") if history else None
    pts = [(h["step"], h["valid_accuracy"]) for h in history
           if h.get("phase") == phase and "valid_accuracy" in h]
    if pts:
      ax_curve.plot(*zip(*pts), marker=".", label=r["run"])
  ax_curve.set_xlabel("step of the run's last stage")
  ax_curve.set_ylabel("validation accuracy (greedy, without routes)")
  ax_curve.set_title("validation curves")
  if ax_curve.lines:
    ax_curve.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="run directories holding eval.json")
  p.add_argument("--out", required=True, help="directory for table.md, table.json and curves")
  p.add_argument("--control", default=None, help="run name every final is compared with")
  a = p.parse_args(argv)
  runs = [d for d in a.runs if os.path.exists(os.path.join(d, "eval.json"))]
  rows = gather(runs, a.control)
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  text = "\n\n".join(f"Greedy test accuracy {s}, paired final - start (512 questions per level):"
                     f"\n\n{table(rows, s, a.control)}" for s in ("without routes", "with routes"))
  (out / "table.md").write_text(text + "\n")
  (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
  plot(rows, out / "paired.png")
  for r in rows:  # the curves and per-run tables beside the summary
    for name in ("training_curves.png", "eval.md", "eval_d1.md"):
      src = os.path.join(r["dir"], name)
      if os.path.exists(src):
        shutil.copy(src, out / f"{r['run']}.{name}")
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
