"""The README's two reproduction tables from a reproduction's results.json.

    python -m experiments.readme_tables experiments/results/reproduce_bf16/results.json

prints the accuracy table (the training and the harder level without routes, the training
level with routes, paired differences to the two controls) and every method against
ReaLM-R1, in the README's wording: unicode minus signs, intervals as (low .. high), bold
where an interval excludes 0.
"""

from __future__ import annotations

import json
import sys

from experiments import reproduce_report

ROWS = {"base": "base", "sft": "SFT start", "more_sft": "control: SFT → more SFT",
        "grpo": "control: SFT → GRPO", "rft": "RFT", "cot_synth": "CoT-synthesizer style",
        "realm_r1": "ReaLM-R1", "no_negatives": "R1, no negatives",
        "no_fading": "R1, no fading", "no_verification": "R1, no verification reward",
        "no_contrast": "R1, no contrast term", "realm_zero": "ReaLM-Zero (from the base)"}


def num(x: float) -> str:
  """Three decimals, a signed unicode minus: 0.0123 -> "+0.012", -0.5 -> "−0.500"."""
  return f"{x:+.3f}".replace("-", "−")


def diff(d: dict | None) -> str:
  """`reproduce_report.ci_cell` (table.md's cell) with unicode minus signs."""
  return reproduce_report.ci_cell(d).replace("-", "−")


def levels(results: dict) -> tuple[str, str]:
  """The training and harder levels' column labels: "L0", "L1" unless the schedule says."""
  lo, hi = results.get("schedule", {}).get("levels", (0, 1))
  return f"L{lo}", f"L{hi}"


def accuracy_table(results: dict) -> str:
  lo, hi = levels(results)
  head = ["run", "seeds", lo, f"{lo} with routes", hi, f"{lo} − GRPO", f"{hi} − GRPO",
          f"{lo} − more SFT", f"{hi} − more SFT"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, label in ROWS.items():
    r = results["summary"].get(name)
    if not r:
      continue
    acc = [f"{r[k]:.3f}" for k in ("l0 without routes", "l0 with routes", "l1 without routes")]
    diffs = [diff(r.get(k)) for k in ("l0 - grpo", "l1 - grpo", "l0 - more_sft", "l1 - more_sft")]
    lines.append("| " + " | ".join([label, str(r["seeds"]), *acc, *diffs]) + " |")
  return "\n".join(lines) + "\n"


def against_r1_table(results: dict) -> str:
  lo, hi = levels(results)
  lines = [f"| method − ReaLM-R1 | {lo} | {lo} with routes | {hi} |", "|---|---|---|---|"]
  for name, label in ROWS.items():
    r = results["against_realm_r1"].get(name)
    if r:
      cells = [diff(r.get(k)) for k in ("l0 without routes", "l0 with routes", "l1 without routes")]
      lines.append("| " + " | ".join([label, *cells]) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m experiments.readme_tables RESULTS_JSON", file=sys.stderr)
    return 2
  with open(argv[0]) as f:
    results = json.load(f)
  print(accuracy_table(results))
  print(against_r1_table(results), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
