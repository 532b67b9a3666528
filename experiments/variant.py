"""One run of a reproduction under another setting, paired with the kept run question by question.

Is the reproduction's start converged, could a cheaper schedule give the same one, and would an
RL method learn more with more exploration? This trains seed s's run NAME (`--run`, any method
of `experiments.reproduce`) again from the same start with extra overrides (the last setting of
a key wins), evaluates it as the reproduction does, and pairs it with the kept run:

    python -m experiments.variant --run sft --seed 0 --name steps4500 sft.steps=4500 sft.eval_every=300
    python -m experiments.variant --run sft --seed 0 --name grouped sft.group_by_bucket=true
    python -m experiments.variant --level 1 --out experiments/results/reproduce_bf16_level1 \\
        --runs runs/reproduce_bf16_level1 --run grpo --name temp2 rl.temperature=2

Writes OUT/variants/seed{s}_RUN_NAME.{json,md} (and the run's eval files to
OUT/variants/seed{s}/RUN/NAME/, for `experiments.variant_table`): accuracy of both runs at the training level
with and without routes and at the harder level, each difference with its 95% interval and
McNemar p (at level >= 1 also on the test questions that need a rule the level-0 start never
distilled, `experiments.rule_split`), both validation curves in brief
(`convergence.curve_summary`), and both wall times (training and the same evaluations). The
run lives in RUNS/variants/seed{s}/RUN/NAME and resumes like any other.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

from experiments import convergence, reproduce, reproduce_report, rule_split, run_queue
from realm_jax.evaluation import paired


def settings(level: int) -> list[tuple[str, str, str]]:
  """(label, `reproduce_report.load_run` key, setting) of what the reproduction measures at
  `level` ("l0": its eval.json at the level, "l1": the harder level's)."""
  return [(f"L{level}", "l0", "without routes"), (f"L{level} with routes", "l0", "with routes"),
          (f"L{level + 1}", "l1", "without routes")]


def commands(run: str, seed: int, name: str, runs: str, sched: reproduce.Schedule,
             overrides: list[str]) -> tuple[str, list[list[str]]]:
  """The reproduction's calls for seed's `run` (train from its start in `runs`, then its two
  evaluations) in a workdir of its own, `overrides` appended to the train call."""
  wd = os.path.join(runs, "variants", f"seed{seed}", run, name)
  calls = reproduce.commands(run, seed, runs, sched)
  for args in calls:
    args[args.index("--workdir") + 1] = wd
  calls[0] += overrides
  return wd, calls


def variant_dir(out: str, seed: int, run: str, name: str) -> str:
  """Where a variant's eval files are kept beside its summary."""
  return os.path.join(out, "variants", f"seed{seed}", run, name)


def _pair(kept, new) -> dict:
  r = paired.paired_compare(kept, new)
  return {"kept": r.acc_a, "new": r.acc_b, "diff": r.diff, "ci_low": r.ci_low,
          "ci_high": r.ci_high, "p_value": r.p_value, "n": r.n}


def compare(kept_dir: str, new_dir: str, level: int, new_rule=None) -> dict:
  """{setting: paired difference new - kept}, each eval file pair on the same questions (else a
  ValueError naming both files); with `new_rule` (a bool per test question at `level`) also on the questions that need a new rule."""
  kept_run, new_run = (reproduce_report.load_run(d, level + 1) for d in (kept_dir, new_dir))
  for k in ("l0", "l1"):  # paired only on the same questions
    reproduce_report.check_same_questions(kept_run[k], new_run[k])
  out = {}
  for label, k, key in settings(level):
    kept, new = (run[k]["results"][key]["correct"] for run in (kept_run, new_run))
    out[label] = _pair(kept, new)
    if new_rule is not None and k == "l0":
      sub = lambda c: np.asarray(c, bool)[new_rule]
      out[f"{label}, a new rule"] = _pair(sub(kept), sub(new))
  return out


def markdown(res: dict) -> str:
  lines = [f"# seed {res['seed']} `{res['run']}`: `{res['name']}` against the reproduction's", "",
           f"Overrides: `{' '.join(res['overrides'])}`. Command: `{res['command']}`.", "",
           "| setting | questions | kept | new | new − kept (95% CI) | McNemar p |",
           "|---|---|---|---|---|---|"]
  for label, d in res["paired"].items():
    lines.append(f"| {label} | {d['n']} | {d['kept']:.3f} | {d['new']:.3f} | {d['diff']:+.3f} "
                 f"({d['ci_low']:+.3f} .. {d['ci_high']:+.3f}) | {d['p_value']:.2g} |")
  lines += ["", "| run | best validation (step) | late gain | steps | wall time (train and evaluations) |",
            "|---|---|---|---|---|"]
  for who in ("kept", "new"):
    c = res["curves"][who]
    gain = "" if c["late_gain"] is None else f"{c['late_gain']:+.3f}"
    lines.append(f"| {who} | {c['best']:.3f} ({c['best_step'] + 1}) | {gain} | {c['last_step'] + 1} "
                 f"| {res['wall'][who] / 60:.1f} min |")
  return "\n".join(lines) + "\n"


def _error(msg: str) -> int:
  print(f"variant: error: {msg}", file=sys.stderr)
  return 2


def main(argv: list[str] | None = None, run_cli=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--run", default="sft", choices=[m for m in reproduce.METHODS if m != "base"],
                 help="the reproduction's run to train again (default sft)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--name", required=True, help="the setting's name: its workdir and files")
  p.add_argument("--out", default="experiments/results/reproduce_bf16")
  p.add_argument("--runs", default="runs/reproduce_bf16")
  reproduce.add_schedule_args(p)  # the reproduction's schedule the kept run was made with
  p.add_argument("--extra", action="append",
                 help="one of the reproduction's overrides for every run, repeated for each "
                      "(default: model.matmul_dtype=bfloat16, as `make reproduce`)")
  p.add_argument("--skip-kept", action="store_true",
                  help="do nothing when this variant's summary is already kept in OUT")
  p.add_argument("overrides", nargs="+", help="the other setting, e.g. sft.steps=4500")
  args = p.parse_args(argv)
  stem = os.path.join(args.out, "variants", f"seed{args.seed}_{args.run}_{args.name}")
  if args.skip_kept and os.path.exists(stem + ".json"):
    print(f"variant: {stem}.json is kept: skipped")
    return 0
  sched = reproduce.schedule_from(args, args.extra or ["model.matmul_dtype=bfloat16"])
  kept_dir = reproduce.result_dir(args.out, args.seed, args.run)
  start = reproduce.run_dir(args.runs, args.seed, reproduce.METHODS[args.run].start)
  for need in (*(os.path.join(kept_dir, f) for f in reproduce.result_files(sched)),
               os.path.join(start, "DONE")):
    if not os.path.exists(need):
      return _error(f"{need} is missing: run the reproduction's seed {args.seed} first")
  with open(os.path.join(kept_dir, "run_summary.json")) as f:
    kept_summary = json.load(f)
  kept_over = kept_summary.get("overrides")
  if kept_over is not None and kept_over != sched.overrides(args.run):
    return _error(f"{kept_dir}/run_summary.json was made with {kept_over}, not "
                  f"{sched.overrides(args.run)}: pass that reproduction's --sft-steps, "
                  f"--sft-ungrouped, --rl-steps, --rl-lr, --level and --extra")
  wd, calls = commands(args.run, args.seed, args.name, args.runs, sched, args.overrides)
  os.makedirs(wd, exist_ok=True)
  cache = os.path.abspath(os.path.join(args.runs, "xla_cache"))
  with reproduce_report.timed(wd), open(os.path.join(wd, "variant.log"), "a") as log:
    for call in calls:
      if call[0] == "train" and os.path.exists(os.path.join(wd, "DONE")):
        continue  # trained: only the evaluations are left
      run_queue.run_call(call, log, cache, run_cli)
      if call[0] == "train":
        run_queue.require_done(wd)
  new_rule = None
  if args.level:  # the kept eval file must hold the questions its overrides give
    new_rule = rule_split.new_rule_labels(args.run, sched.overrides(args.run), args.level,
                                          os.path.join(kept_dir, "eval.json"))
  try:
    pairs = compare(kept_dir, wd, args.level, new_rule)
  except ValueError as e:
    return _error(str(e))
  res = {"seed": args.seed, "run": args.run, "name": args.name,
         "overrides": [*sched.overrides(args.run), *args.overrides],
         "command": "python -m experiments.variant " + " ".join(argv if argv is not None else sys.argv[1:]),
         "commit": reproduce_report.run_info("", args.out)["commit"], "host": reproduce_report.host(),
         "paired": pairs,
         "curves": {"kept": convergence.curve_summary(kept_summary["validation"]),
                    "new": convergence.curve_summary(reproduce_report.validation_curve(wd))},
         "wall": {"kept": kept_summary["wall_seconds"],
                  "new": reproduce_report.wall_summary(wd)["wall_seconds"]}}
  kept_evals = variant_dir(args.out, args.seed, args.run, args.name)
  os.makedirs(kept_evals, exist_ok=True)
  for f in reproduce.result_files(sched):
    if f.startswith("eval"):  # small; committed, so tables across variants need no run dirs
      shutil.copyfile(os.path.join(wd, f), os.path.join(kept_evals, f))
  with open(stem + ".json", "w") as f:
    json.dump(res, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(res))
  print(markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
