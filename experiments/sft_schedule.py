"""Another SFT schedule for one seed's shared start, paired against the reproduction's.

Is the reproduction's start converged, and could a cheaper schedule give the same start?
This trains seed s's `sft` run again from the same base with extra overrides (the last
setting of a key wins), evaluates it as the reproduction does, and pairs it question by
question with the kept start (`experiments/results/reproduce_bf16/runs/seed{s}/sft`):

    python -m experiments.sft_schedule --seed 0 --name steps4500 sft.steps=4500 sft.eval_every=300
    python -m experiments.sft_schedule --seed 0 --name grouped sft.group_by_bucket=true

Writes OUT/NAME.json and OUT/NAME.md (OUT: the results' `sft_schedule/`): accuracy of both
starts at the training level with and without routes and at the harder level, each
difference with its 95% interval and McNemar p, both validation curves in brief
(`convergence.curve_summary`), and both wall times (training and the same evaluations). The run lives in
RUNS/sft_schedule/seed{s}/NAME and resumes like any other.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from experiments import convergence, reproduce, reproduce_report, run_queue
from realm_jax.evaluation import paired

SETTINGS = (("L0", "eval.json", "without routes"), ("L0 with routes", "eval.json", "with routes"),
            ("L1", "eval_d{level}.json", "without routes"))


def commands(seed: int, name: str, runs: str, sched: reproduce.Schedule, overrides: list[str]
             ) -> tuple[str, list[list[str]]]:
  """The reproduction's calls for seed's `sft` run (train, then its two evaluations) in a
  workdir of its own, `overrides` appended to the train call."""
  wd = os.path.join(runs, "sft_schedule", f"seed{seed}", name)
  calls = reproduce.commands("sft", seed, runs, sched)
  for args in calls:
    args[args.index("--workdir") + 1] = wd
  calls[0] += overrides
  return wd, calls


def compare(kept_dir: str, new_dir: str, harder_level: int) -> dict:
  """{setting: paired difference new - kept} over the settings both eval files hold."""
  out = {}
  for label, f, key in SETTINGS:
    f = f.format(level=harder_level)
    kept = reproduce_report.correctness(os.path.join(kept_dir, f))[key]
    new = reproduce_report.correctness(os.path.join(new_dir, f))[key]
    r = paired.paired_compare(kept, new)
    out[label] = {"kept": r.acc_a, "new": r.acc_b, "diff": r.diff, "ci_low": r.ci_low,
                  "ci_high": r.ci_high, "p_value": r.p_value, "n": r.n}
  return out


def markdown(res: dict) -> str:
  lines = [f"# seed {res['seed']} SFT start: `{res['name']}` against the reproduction's", "",
           f"Overrides: `{' '.join(res['overrides'])}`. Command: `{res['command']}`.", "",
           "| setting | kept | new | new − kept (95% CI) | McNemar p |", "|---|---|---|---|---|"]
  for label, d in res["paired"].items():
    lines.append(f"| {label} | {d['kept']:.3f} | {d['new']:.3f} | {d['diff']:+.3f} "
                 f"({d['ci_low']:+.3f} .. {d['ci_high']:+.3f}) | {d['p_value']:.2g} |")
  lines += ["", "| start | best validation (step) | late gain | steps | wall time (train and evaluations) |",
            "|---|---|---|---|---|"]
  for who in ("kept", "new"):
    c = res["curves"][who]
    gain = "" if c["late_gain"] is None else f"{c['late_gain']:+.3f}"
    lines.append(f"| {who} | {c['best']:.3f} ({c['best_step'] + 1}) | {gain} | {c['last_step'] + 1} "
                 f"| {res['wall'][who] / 60:.1f} min |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, run_cli=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--name", required=True, help="the schedule's name: its workdir and files")
  p.add_argument("--out", default="experiments/results/reproduce_bf16")
  p.add_argument("--runs", default="runs/reproduce_bf16")
  reproduce.add_schedule_args(p)  # the reproduction's schedule the kept start was made with
  p.add_argument("--extra", action="append",
                 help="one of the reproduction's overrides for every run, repeated for each "
                      "(default: model.matmul_dtype=bfloat16, as `make reproduce`)")
  p.add_argument("overrides", nargs="+", help="the other schedule, e.g. sft.steps=4500")
  args = p.parse_args(argv)
  sched = reproduce.schedule_from(args, args.extra or ["model.matmul_dtype=bfloat16"])
  kept_dir = reproduce.result_dir(args.out, args.seed, "sft")
  base = reproduce.run_dir(args.runs, args.seed, "base")
  for need in (os.path.join(kept_dir, "eval.json"), os.path.join(kept_dir, "run_summary.json"),
               os.path.join(base, "DONE")):
    if not os.path.exists(need):
      print(f"sft_schedule: error: {need} is missing: run the reproduction's seed "
            f"{args.seed} first", file=sys.stderr)
      return 2
  with open(os.path.join(kept_dir, "run_summary.json")) as f:
    kept_summary = json.load(f)
  kept_over = kept_summary.get("overrides")
  if kept_over is not None and kept_over != sched.overrides("sft"):
    print(f"sft_schedule: error: {kept_dir}/run_summary.json was made with {kept_over}, not "
          f"{sched.overrides('sft')}: pass that reproduction's --sft-steps, --sft-ungrouped and --extra",
          file=sys.stderr)
    return 2
  wd, calls = commands(args.seed, args.name, args.runs, sched, args.overrides)
  os.makedirs(wd, exist_ok=True)
  cache = os.path.abspath(os.path.join(args.runs, "xla_cache"))
  with reproduce_report.timed(wd), open(os.path.join(wd, "sft_schedule.log"), "a") as log:
    for call in calls:
      run_queue.run_call(call, log, cache, run_cli)
      if call[0] == "train":
        run_queue.require_done(wd)
  res = {"seed": args.seed, "name": args.name, "overrides": [*sched.overrides("sft"), *args.overrides],
         "command": "python -m experiments.sft_schedule " + " ".join(argv if argv is not None else sys.argv[1:]),
         "commit": reproduce_report.run_info("", args.out)["commit"], "host": reproduce_report.host(),
         "paired": compare(kept_dir, wd, sched.harder_level),
         "curves": {"kept": convergence.curve_summary(kept_summary["validation"]),
                    "new": convergence.curve_summary(reproduce_report.validation_curve(wd))},
         "wall": {"kept": kept_summary["wall_seconds"],
                  "new": reproduce_report.wall_summary(wd)["wall_seconds"]}}
  out = os.path.join(args.out, "sft_schedule")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"seed{args.seed}_{args.name}.json"), "w") as f:
    json.dump(res, f, indent=1)
  with open(os.path.join(out, f"seed{args.seed}_{args.name}.md"), "w") as f:
    f.write(markdown(res))
  print(markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
