"""Gathers the evidence runs' paired results into one table (Markdown and JSON).

Each run directory holds `eval.json` (the training level) and, where
`realm-jax eval --workdir DIR eval.difficulty=1` ran, `eval_d1.json`; both hold
the start and the final params on the same test questions and their paired
comparison (McNemar exact p, 95% CI of the difference).

    python -m experiments.evidence_table runs/sweeps/evidence_rl/* runs/evidence_more_sft \
        --out experiments/results/evidence_rl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from realm_jax.evaluation import report

LEVELS = (("eval.json", "level 0"), ("eval_d1.json", "level 1"))


def _cell(paired: dict | None) -> list[str]:
  if not paired:
    return ["", "", "", ""]
  return [f"{paired['acc_a']:.3f}", f"{paired['acc_b']:.3f}",
          f"{paired['diff']:+.3f} ({paired['ci_low']:+.3f} .. {paired['ci_high']:+.3f})",
          f"{paired['p_value']:.2g}"]


def gather(run_dirs: list[str]) -> list[dict]:
  rows = []
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
    rows.append(row)
  return rows


def table(rows: list[dict], setting: str = "without routes") -> str:
  head = ["run"] + [f"{lv} {c}" for _, lv in LEVELS for c in ("start", "final", "final - start",
                                                               "McNemar p")]
  body = [[r["run"]] + [c for _, lv in LEVELS for c in _cell(r.get(lv, {}).get(setting))]
          for r in rows]
  return report.markdown_table(head, body)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="run directories holding eval.json")
  p.add_argument("--out", required=True, help="directory for table.md, table.json and curves")
  a = p.parse_args(argv)
  runs = [d for d in a.runs if os.path.exists(os.path.join(d, "eval.json"))]
  rows = gather(runs)
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  text = "\n\n".join(f"Greedy test accuracy {s}, paired final - start (512 questions per level):"
                     f"\n\n{table(rows, s)}" for s in ("without routes", "with routes"))
  (out / "table.md").write_text(text + "\n")
  (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
  for r in rows:  # the curves and per-run tables beside the summary
    for name in ("training_curves.png", "eval.md", "eval_d1.md"):
      src = os.path.join(r["dir"], name)
      if os.path.exists(src):
        shutil.copy(src, out / f"{r['run']}.{name}")
  print(text)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
