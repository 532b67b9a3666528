"""The miniature reproduction: every method and ablation, several seeds, one table.

    make reproduce        # = python -m experiments.reproduce --out experiments/results
                          #   --seeds 5 $(REPRO_ARGS): the schedule is in the Makefile

Per seed: one shared weak base (`base_model`), then each method starts from
it (`init_from`), is trained and evaluated with and without routes; ReaLM-R1
and its ablations start their RL from the seed's SFT run (its distillation
stage, trained once). Runs are
subprocesses of the CLI, so a crash loses one run, and finished runs (eval.json
present) are skipped: rerunning the command resumes the reproduction.
Output: results.json, results.md (mean and 95% t-interval over seeds),
accuracy.png, and the exact command and commit id.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

METHODS = ("sft", "rft", "grpo", "cot_synth", "realm_zero", "realm_r1", "ablation_no_negatives",
           "ablation_no_fading", "ablation_no_verification", "ablation_no_contrast")
# ReaLM-R1 and its ablations: RL from the seed's SFT (guided distillation) run.
FROM_SFT = ("realm_r1", "ablation_no_negatives", "ablation_no_fading", "ablation_no_verification",
            "ablation_no_contrast")
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
  """Mean and half-width of the 95% t-interval (0 for a single value)."""
  n = len(values)
  if n == 0:
    return float("nan"), float("nan")
  m = sum(values) / n
  if n == 1:
    return m, 0.0
  sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
  return m, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def _cli(*args: str, log: str, cache: str) -> None:
  cmd = [sys.executable, "-m", "realm_jax", *args]
  # Every run compiles the same shapes: a persistent compilation cache pays for them once.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  with open(log, "a") as f:
    f.write(f"$ {' '.join(cmd)}\n")
    f.flush()
    subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, env=env)


def applicable(experiment: str, overrides: list[str]) -> list[str]:
  """Drops `STAGE.*` overrides for stages the experiment does not run (a shorter
  schedule must not switch a stage on)."""
  from realm_jax import configs
  cfg = configs.load_experiment(experiment)
  enabled = {"base": cfg.base.steps > 0, "sft": cfg.sft.steps > 0, "rft": cfg.rft.rounds > 0,
             "rl": cfg.rl.steps > 0}
  return [o for o in overrides if enabled.get(o.split(".", 1)[0], True)]


def seed_plan(seed: int, methods: list[str], runs: str, overrides: list[str]
              ) -> list[tuple[str | None, str, str, list[str]]]:
  """The runs of one seed, in order: (reported method or None, experiment, workdir, overrides).

  Every method starts from the seed's base model; ReaLM-R1 and its ablations
  start from the seed's SFT run instead, trained once (reported as `sft` when
  `sft` is among the methods, as a helper run otherwise). The starting point
  comes *after* the shared overrides, so a shared `sft.steps=N` shortens the
  SFT run but never makes an RL run repeat the distillation it starts from.
  """
  base = os.path.join(runs, f"seed{seed}", "base_model")
  sft_dir = os.path.join(runs, f"seed{seed}", "sft")
  plan = [("base_model", "base_model", base, [f"seed={seed}", *overrides])]
  sft_label = "sft" if "sft" in methods else None
  for m in methods:
    if (m == "sft" or m in FROM_SFT) and not any(wd == sft_dir for _, _, wd, _ in plan):
      plan.append((sft_label, "sft", sft_dir, [f"seed={seed}", *overrides, f"init_from={base}"]))
    if m == "sft":
      continue
    start = [f"init_from={sft_dir}", "sft.steps=0"] if m in FROM_SFT else [f"init_from={base}"]
    plan.append((m, m, os.path.join(runs, f"seed{seed}", m), [f"seed={seed}", *overrides, *start]))
  return plan


def run_one(experiment: str, workdir: str, overrides: list[str], log: str) -> dict:
  overrides = applicable(experiment, overrides)
  result_path = os.path.join(workdir, "eval.json")
  if not os.path.exists(result_path):
    t0 = time.time()
    cache = os.path.abspath(os.path.join(os.path.dirname(log), "xla_cache"))
    _cli("train", experiment, "--workdir", workdir, *overrides, log=log, cache=cache)
    _cli("eval", "--workdir", workdir, "eval.final_only=true", log=log, cache=cache)
    with open(os.path.join(workdir, "wall_seconds"), "w") as f:
      f.write(f"{time.time() - t0:.1f}\n")
  with open(result_path) as f:
    return json.load(f)["results"]


def final_stage(results: dict) -> dict:
  return next(v for k, v in results.items() if k.startswith("final"))


def summarize(per_method: dict[str, list[dict]], k: int) -> tuple[dict, str]:
  summary = {}
  lines = [f"| method | seeds | accuracy without routes | accuracy with routes | pass@{k} (no routes) "
           f"| maj@{k} (no routes) | route verdict accuracy |", "|---|---|---|---|---|---|---|"]
  for method, runs in per_method.items():
    finals = [final_stage(r) for r in runs]
    row = {}
    for key, setting, metric in (("acc_no_routes", "without routes", "accuracy"),
                                 ("acc_routes", "with routes", "accuracy"),
                                 ("pass_k", "without routes", f"pass@{k}"),
                                 ("maj_k", "without routes", f"maj@{k}"),
                                 ("verify", "with routes", "verification_accuracy")):
      vals = [f[setting][metric] for f in finals if metric in f[setting]]
      row[key] = mean_ci(vals)
    summary[method] = {k2: {"mean": v[0], "ci95": v[1]} for k2, v in row.items()}
    fmt = lambda mc: f"{mc[0]:.3f} ± {mc[1]:.3f}"
    lines.append(f"| {method} | {len(runs)} | {fmt(row['acc_no_routes'])} | {fmt(row['acc_routes'])} | "
                 f"{fmt(row['pass_k'])} | {fmt(row['maj_k'])} | {fmt(row['verify'])} |")
  return summary, "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(summary)
  x = range(len(names))
  fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.9), 4))
  for off, key, label in ((-0.2, "acc_no_routes", "without routes"), (0.2, "acc_routes", "with routes")):
    ax.bar([i + off for i in x], [summary[n][key]["mean"] for n in names], width=0.4,
           yerr=[summary[n][key]["ci95"] for n in names], label=label, capsize=3)
  ax.set_xticks(list(x), names, rotation=30, ha="right")
  ax.set_ylabel("greedy accuracy (eval set)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="experiments/results")
  p.add_argument("--runs", default="runs/reproduce")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("overrides", nargs="*", help="applied to every run, e.g. rl.steps=20")
  args = p.parse_args(argv)
  # The code the runs use: taken at start (later commits must not relabel the results).
  args.commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                               text=True).stdout.strip()
  if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                     f":(exclude){args.out}"], capture_output=True, text=True).stdout.strip():
    args.commit += " (plus uncommitted changes)"
  os.makedirs(args.out, exist_ok=True)
  log = os.path.join(args.runs, "reproduce.log")
  os.makedirs(args.runs, exist_ok=True)
  methods = [m for m in args.methods.split(",") if m]
  per_method: dict[str, list[dict]] = {"base_model": []}
  per_method.update({m: [] for m in methods})
  t0 = time.time()
  for seed in range(args.seeds):
    for method, experiment, workdir, overrides in seed_plan(seed, methods, args.runs, args.overrides):
      result = run_one(experiment, workdir, overrides, log)
      if method is not None:
        per_method[method].append(result)
        print(f"[reproduce] seed {seed} {method} done ({(time.time() - t0) / 60:.1f} min)", flush=True)
    # Results after every finished seed: an interrupted reproduction still reports.
    write_results(args, argv, per_method, seed + 1, time.time() - t0)


def write_results(args, argv, per_method: dict, seeds_done: int, seconds: float) -> None:
  k = 4
  summary, table = summarize(per_method, k)
  commit = args.commit
  command = "python -m experiments.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump({"command": command, "commit": commit, "seeds": seeds_done, "summary": summary,
               "wall_minutes": seconds / 60}, f, indent=2)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(f"# Miniature reproduction\n\nCommand: `{command}`  \nCommit: `{commit}`  \n"
            f"Seeds: {seeds_done}; mean ± 95% t-interval over seeds; {seconds / 60:.0f} minutes on "
            f"a 2-core CPU; eval questions of the tariff domain never seen in training.\n\n" + table)
  plot(summary, os.path.join(args.out, "accuracy.png"))
  print(table, flush=True)


if __name__ == "__main__":
  main()
