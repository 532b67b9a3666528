"""Where an RL run's learning signal comes from: the reward columns that vary within groups.

A reward column that is the same for a group's G samples adds one amount to all of them,
and group-relative advantages subtract it: it teaches nothing there. RL runs log, per
step, the share of groups in which each column varies (`signal/{name}_varies`) and in
which it alone varies among the weighted columns (`signal/{name}_only`: without it the
group would have no signal); see `realm_jax.rl.rewards.group_signal`.

    make group-signal    # after make reproduce, with the same REPRO_DTYPE; that is
    python -m experiments.group_signal --out experiments/results/reproduce_bf16 \\
        --runs runs/reproduce_bf16 model.matmul_dtype=bfloat16

trains each method of `--methods` again from its start (the SFT start, or the base) in
`--runs` (a finished `make reproduce`), with the reproduction's own overrides, into
`--signal-runs`. Each run is the table's run again, now with the signal metrics:
`same_as_kept` says whether its validation curve equals the kept one's (XLA:CPU's numbers
depend on the CPU, and on the CPU count when the reproduction pinned runs with --jobs 2).
It writes OUT/group_signal.{json,md} (`_seed{s}` added for seeds other than 0): per method,
the means over the RL steps (`--no-train`: of the runs already there, e.g. `--signal-runs`
the reproduction's own `--runs`), with the token entropy and the prompts and completions
cut to their length limits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from experiments import reproduce, reproduce_report, run_queue


def train_args(name: str, seed: int, runs: str, signal_runs: str,
               sched: reproduce.Schedule) -> list[str]:
  """The reproduction's train call of `name` (its start in `runs`), writing to `signal_runs`."""
  args = list(reproduce.commands(name, seed, runs, sched)[0])
  args[args.index("--workdir") + 1] = reproduce.run_dir(signal_runs, seed, name)
  return args


def summarise(workdir: str) -> dict:
  """Means over a run's RL steps of p_routes, zero_variance_share and the signal/* metrics;
  `verification_varies_given_routes` = sum of verification_varies / sum of p_routes (the
  share of route-carrying groups whose verification reward varies)."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = []
  with open(path) as f:
    for line in f:
      m = json.loads(line)
      if m.get("phase") == "rl" and "p_routes" in m:
        rows.append(m)
  rows = list({m["step"]: m for m in rows}.values())  # a resumed step counts once
  if not rows:
    raise ValueError(f"{path}: no RL step rows")
  if not any(k.startswith("signal/") for k in rows[0]):
    raise ValueError(f"{path}: no signal/* metrics; the run predates them: train it again")
  mean = lambda k: sum(m[k] for m in rows) / len(rows)
  out = {"steps": len(rows), "p_routes": mean("p_routes"),
         "groups_with_signal": 1.0 - mean("zero_variance_share")}
  out.update({k: mean(k) for k in sorted(rows[0]) if k.startswith("signal/")})
  # how much the policy still explores, and whether its prompts or completions were cut
  out.update({k: mean(k) for k in ("entropy", "truncated") if k in rows[0]})
  out["prompts_cut"] = int(sum(m.get("prompts_too_long", 0) for m in rows))
  shown = sum(m["p_routes"] for m in rows)
  if "signal/verification_varies" in rows[0]:  # None: no group had routes
    varies = sum(m["signal/verification_varies"] for m in rows)
    out["verification_varies_given_routes"] = varies / shown if shown else None
    # r_ver is 0 without routes, so this is its mean over the completions that saw routes
    r_ver = sum(m["reward/verification"] for m in rows)
    out["verification_reward_given_routes"] = r_ver / shown if shown else None
  return out


def same_as_kept(workdir: str, kept_summary: str) -> bool | None:
  """Whether the run's validation curve equals the kept run's (None: nothing kept)."""
  kept = _kept(kept_summary).get("validation")
  return kept == reproduce_report.validation_curve(workdir) if kept else None


def _kept(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def table(results: dict[str, dict]) -> str:
  cols = [("steps", "RL steps"), ("p_routes", "prompts with routes"),
          ("groups_with_signal", "groups with any signal"),
          ("signal/answer_varies", "answer varies"), ("signal/answer_only", "answer alone"),
          ("verification_varies_given_routes", "verification varies (of groups with routes)"),
          ("signal/verification_only", "verification alone"),
          ("verification_reward_given_routes", "verdicts right (sampled, with routes)"),
          ("signal/format_only", "format alone"), ("entropy", "token entropy, nats"),
          ("truncated", "completions cut"), ("prompts_cut", "prompts cut")]
  lines = ["| method | same run as kept | " + " | ".join(c[1] for c in cols) + " |",
           "|---|---|" + "---|" * len(cols)]
  for name, r in results.items():
    cells = [str(r[k]) if k in ("steps", "prompts_cut") else
             ("" if r.get(k) is None else f"{r[k]:.3f}")
             for k, _ in cols]
    lines.append(f"| {name} | {r['same_as_kept']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, run_cli=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--runs", default="runs/reproduce_bf16", help="a reproduction's run directory")
  p.add_argument("--out", default="experiments/results/reproduce_bf16",
                 help="its results (`make reproduce`'s --out); the table is written there")
  p.add_argument("--kept", help="its kept results to compare with (default: --out)")
  p.add_argument("--signal-runs", help="where the runs go (default: RUNS/group_signal)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--methods", default="realm_r1,no_verification")
  p.add_argument("--no-train", action="store_true",
                 help="tabulate the runs already in --signal-runs, training nothing")
  reproduce.add_schedule_args(p)
  p.add_argument("overrides", nargs="*",
                 help="the reproduction's, e.g. model.matmul_dtype=bfloat16")
  args = p.parse_args(argv)
  args.kept = args.kept or args.out
  args.signal_runs = args.signal_runs or os.path.join(args.runs, "group_signal")
  names = [m for m in args.methods.split(",") if m]
  rl = [m for m, v in reproduce.METHODS.items() if v.experiment == "evidence_rl" and m != "rft"]
  bad = [m for m in names if m not in rl]
  if bad or not names:
    p.error(f"--methods: {', '.join(bad) or 'none'}: choose among the RL methods {', '.join(rl)}")
  for start in sorted({reproduce.METHODS[m].start for m in names}):
    if not reproduce.has_params(args.runs, args.seed, start):
      p.error(f"--runs: {reproduce.run_dir(args.runs, args.seed, start)} holds no finished "
              "start (no DONE); run make reproduce first")
  sched = reproduce.schedule_from(args, args.overrides)
  kept = {m: os.path.join(reproduce.result_dir(args.kept, args.seed, m), "run_summary.json")
          for m in names}
  for name in names:  # the kept run's settings, or it would measure another run
    made = _kept(kept[name]).get("overrides")
    if made is not None and made != sched.overrides(name):
      p.error(f"{kept[name]}: made with {made}, this run would use {sched.overrides(name)}; "
              "pass the reproduction's overrides and sizes")
  results = {}
  for name in names:
    cli = train_args(name, args.seed, args.runs, args.signal_runs, sched)
    wd = cli[cli.index("--workdir") + 1]
    print(f"[group_signal] {name}: {'reading' if args.no_train else 'training into'} {wd}",
          flush=True)
    if not args.no_train:
      (run_cli or (lambda a: subprocess.run([sys.executable, "-m", "realm_jax", *a],
                                             check=True)))(cli)
    run_queue.require_done(wd)
    results[name] = dict(summarise(wd), same_as_kept=same_as_kept(wd, kept[name]))
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, "group_signal" + (f"_seed{args.seed}" if args.seed else ""))
  with open(stem + ".json", "w") as f:
    json.dump({"seed": args.seed, "command": "python -m experiments.group_signal "
               + " ".join(argv if argv is not None else sys.argv[1:]), "results": results}, f,
              indent=1)
  with open(stem + ".md", "w") as f:
    f.write(table(results))
  print(table(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
