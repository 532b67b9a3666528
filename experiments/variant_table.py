"""Runs made under one `experiments.variant` setting, paired among themselves and with the
reproduction's own runs.

When several methods were trained under one setting (the same NAME: e.g. each from another
start, `init_from=` that start's variant), this pairs them question by question as the
reproduction's table does: per run, accuracy at the training level without and with routes,
on the questions that need a rule the level-0 start never distilled (`experiments.rule_split`),
and at the next level, as means over seeds; and each run's difference to a control with a
two-level bootstrap interval (seeds, and the questions every seed shares).

    python -m experiments.variant_table experiments/results/reproduce_bf16_level1 \\
        --name from_routes_l1 --start sft:routes_l1 --kept sft,grpo,realm_r1 --seeds 1

Rows: the reproduction's kept runs (`--kept`, "kept NAME"), the variant start (`--start
RUN:NAME`), then each of `--runs` under NAME. Reads the eval files `experiments.variant` keeps
in OUT/variants/seed{s}/RUN/NAME/; writes OUT/variants/table_NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from experiments import readme_tables, reproduce, reproduce_report, rule_split, variant
from realm_jax.evaluation import paired


def columns(level: int) -> list[tuple[str, str, str, bool]]:
  """(label, eval file, setting, new-rule questions only)."""
  return [(f"L{level}", "eval.json", "without routes", False),
          (f"L{level}, new rule", "eval.json", "without routes", True),
          (f"L{level} with routes", "eval.json", "with routes", False),
          ("with routes, new rule", "eval.json", "with routes", True),
          (f"L{level + 1}", f"eval_d{level + 1}.json", "without routes", False)]


def load(rows: dict[str, list[str]], level: int, overrides: tuple[str, list[str]]) -> dict:
  """{row: [{column: bool per question} per seed]}; every row's eval files must hold the same
  questions per seed (their digests), split by `overrides` = (run, its overrides)."""
  out: dict[str, list[dict]] = {r: [] for r in rows}
  n_seeds = len(next(iter(rows.values())))
  for s in range(n_seeds):
    digests = {}
    for r, dirs in rows.items():
      for f in ("eval.json", f"eval_d{level + 1}.json"):
        with open(os.path.join(dirs[s], f)) as fh:
          digests.setdefault(f, {})[r] = json.load(fh)["questions_sha256"]
    for f, d in digests.items():
      if len(set(d.values())) > 1:
        raise ValueError(f"seed {s}: the runs' {f} hold other questions ({d}); they cannot be paired")
    first = next(iter(rows.values()))[s]
    new = rule_split.new_rule_labels(overrides[0], overrides[1], level,
                                     os.path.join(first, "eval.json"))
    for r, dirs in rows.items():
      cols = {}
      for label, f, setting, only_new in columns(level):
        c = np.asarray(reproduce_report.correctness(os.path.join(dirs[s], f))[setting], bool)
        cols[label] = c[new] if only_new else c
      out[r].append(cols)
  return out


def summarize(per: dict, level: int, control: str) -> dict:
  res = {}
  for r, seeds in per.items():
    row = {"seeds": len(seeds)}
    for label, *_ in columns(level):
      row[label] = {"accuracy": float(np.mean([c[label].mean() for c in seeds])),
                    "questions": int(seeds[0][label].size)}
      if r != control and control in per:
        diffs = [c[label].astype(float) - k[label].astype(float) for c, k in zip(seeds, per[control])]
        b = paired.bootstrap_over_seeds(diffs, shared_questions=True)
        row[label]["minus_control"] = {"diff": b.diff, "ci_low": b.ci_low, "ci_high": b.ci_high}
    res[r] = row
  return res


def markdown(res: dict, level: int, control: str) -> str:
  labels = [c[0] for c in columns(level)]
  lines = ["| run | seeds | " + " | ".join(labels) + " | " +
           " | ".join(f"{x} − {control}" for x in labels[:4]) + " |",
           "|---|---|" + "---|" * (2 * len(labels) - 1)]
  for r, row in res.items():
    acc = [f"{row[x]['accuracy']:.3f}" for x in labels]
    diff = [readme_tables.diff(row[x].get("minus_control")) for x in labels[:4]]
    lines.append(f"| {r} | {row['seeds']} | " + " | ".join(acc + diff) + " |")
  q = {x: res[next(iter(res))][x]["questions"] for x in labels}
  return "\n".join(lines) + f"\n\nQuestions per seed: {q}.\n"


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("out")
  p.add_argument("--name", required=True, help="the variant setting the --runs were made under")
  p.add_argument("--runs", default="grpo,realm_r1,more_sft,cot_synth")
  p.add_argument("--start", help="RUN:NAME, the variant start the runs began from")
  p.add_argument("--kept", default="", help="the reproduction's own runs, as reference rows")
  p.add_argument("--control", default="grpo", help="a --runs name (default grpo)")
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--level", type=int, default=1)
  args = p.parse_args(argv)
  rows: dict[str, list[str]] = {}
  for k in filter(None, args.kept.split(",")):
    rows[f"kept {k}"] = [reproduce.result_dir(args.out, s, k) for s in range(args.seeds)]
  made = [tuple(args.start.split(":"))] if args.start else []
  made += [(r, args.name) for r in args.runs.split(",")]
  for run, name in made:
    rows[f"{run} ({name})"] = [variant.variant_dir(args.out, s, run, name) for s in range(args.seeds)]
  first_run, first_name = made[-1]
  summary = os.path.join(args.out, "variants", f"seed0_{first_run}_{first_name}.json")
  with open(summary) as f:
    ov = (first_run, json.load(f)["overrides"])
  control = f"{args.control} ({args.name})"
  try:
    res = summarize(load(rows, args.level, ov), args.level, control)
  except (FileNotFoundError, ValueError) as e:
    print(f"variant_table: error: {e}", file=sys.stderr)
    return 2
  stem = os.path.join(args.out, "variants", f"table_{args.name}")
  cmd = "python -m experiments.variant_table " + " ".join(argv if argv is not None else sys.argv[1:])
  with open(stem + ".json", "w") as f:
    json.dump({"command": cmd, "control": control, "results": res}, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(res, args.level, control) + f"\nCommand: `{cmd}`.\n")
  print(markdown(res, args.level, control))
  return 0


if __name__ == "__main__":
  sys.exit(main())
