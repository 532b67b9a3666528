"""`make evidence-smollm2`: SmolLM2-135M-Instruct trained by realm_jax on tariff level 0
(`experiments/evidence_smollm2.py`), evaluated before SFT, after SFT and after each RL run
on the same 320 held-out questions, paired.

    python -m experiments.smollm2                       # every run not yet kept
    python -m experiments.smollm2 --runs-only sft       # one run (an RL run needs the SFT
                                                        # run's params on this machine)

Runs, in order, each a background-sized job (~1-2 h on two CPU cores):

    sft       LoRA guided distillation from the packaged GGUF; its eval pairs the model as
              loaded (before SFT) with the SFT params
    sft_more  150 more distillation steps from `sft` (its adapters folded, fresh ones, half
              the learning rate): `sft` stopped with validation still climbing
    grpo      from `sft_more`: GRPO without routes (the control)
    realm_r1  from `sft_more`: MRPV + EAAI with the route-contrast term

Each run trains through the CLI (checkpointed, so an interrupted run resumes), is
evaluated with and without routes, and its eval file, validation and reward curves and
wall time are kept under OUT/NAME (committed), so a later session runs only what is
missing. The report (OUT/table.md, results.json, curves.png) is rewritten after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from experiments import reproduce_report
from realm_jax.evaluation import paired

EXPERIMENT = "evidence_smollm2"
RL_STEPS = 30
R1 = ("rl.routes=eaai", "rl.mrpv.contrast_coef=0.1")
# RL updates rematerialise: without, ReaLM-R1's update on 8 x 8 rollouts after 384-token
# prompts needs ~25 GB even in 8 microbatches (7 GB with); SFT fits in 10 GB without
RL = ("sft.steps=0", f"rl.steps={RL_STEPS}", "model.remat=true")
# 150 steps left validation still climbing (0.42 -> 0.53 -> 0.56 over the last 50); `sft_more`
# continues from there, fresh adapters on the folded ones, until validation flattens
SFT_MORE = ("rl.steps=0", "sft.lr=2.5e-4", "sft.warmup=10")
RUNS: dict[str, tuple[str | None, tuple[str, ...], str]] = {
    "sft": (None, ("rl.steps=0",), "guided distillation (LoRA) from the packaged GGUF"),
    "sft_more": ("sft", SFT_MORE, "150 more distillation steps from `sft` at half its lr: "
                 "the RL start"),
    "grpo": ("sft_more", (*RL, "rl.routes=never"), "control: SFT -> GRPO, no routes"),
    "realm_r1": ("sft_more", (*RL, *R1),
                 "ReaLM-R1: SFT -> MRPV + EAAI with route contrast"),
}
SETTINGS = ("without routes", "with routes")
# (B, A): B - A, paired on the same questions
PAIRS = (("sft", "pretrained"), ("sft_more", "sft"), ("grpo", "sft_more"),
         ("realm_r1", "sft_more"), ("realm_r1", "grpo"))


def commands(name: str, runs: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
  start, overrides, _ = RUNS[name]
  wd = os.path.join(runs, name)
  init = [f"init_from={os.path.join(runs, start)}"] if start else []
  # an RL run's start is the SFT run's final params, evaluated there
  final_only = ["eval.final_only=true"] if start else []
  return [["train", EXPERIMENT, "--workdir", wd, *init, *overrides, *extra],
          ["eval", "--workdir", wd, *final_only, *extra]]


def curves(workdir: str) -> dict[str, list[list[float]]]:
  """[step, value] rows of the validation accuracy and the RL reward, a resumed step once."""
  out: dict[str, dict] = {"valid_accuracy": {}, "reward": {}}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        m = json.loads(line)
        for key in out:
          if key in m and m.get("phase") in ("sft", "rl"):
            out[key][(m["phase"], m["step"])] = m[key]
  return {k: [[p, s, v] for (p, s), v in rows.items()] for k, rows in out.items()}


def keep(name: str, runs: str, out: str, commit: str) -> None:
  wd, rd = os.path.join(runs, name), os.path.join(out, name)
  os.makedirs(rd, exist_ok=True)
  shutil.copyfile(os.path.join(wd, "eval.json"), os.path.join(rd, "eval.json"))
  with open(os.path.join(rd, "run_summary.json"), "w") as f:
    json.dump({**reproduce_report.wall_summary(wd), "commit": commit,
               "routes_shown": reproduce_report.routes_shown(wd), **curves(wd)}, f, indent=1)


def load(out: str) -> dict[str, dict]:
  """{"pretrained" | run name: {"results": per setting, "questions", "path"}} of kept runs."""
  got = {}
  for name in RUNS:
    path = os.path.join(out, name, "eval.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      r = json.load(f)
    for stage, res in r["results"].items():
      key = name if stage.startswith("final") else "pretrained" if "pretrained" in stage else None
      if key:
        got[key] = {"results": res, "questions": r.get("questions_sha256"), "path": path,
                    "baselines": r.get("baselines", {})}
  return got


def validation(summary: dict) -> str:
  """The validation curve in brief: first -> best (its step) -> last, so a reader sees
  whether the stage was still climbing when it stopped."""
  pts = sorted((step, v) for _, step, v in summary.get("valid_accuracy", []))
  if not pts:
    return ""
  (s0, v0), (sl, vl) = pts[0], pts[-1]
  sb, vb = max(pts, key=lambda p: (p[1], -p[0]))  # the earliest best, as the run keeps it
  return f"{v0:.2f} (step {s0}) → best {vb:.2f} (step {sb}) → {vl:.2f} (step {sl})"


def report(out: str, command: str, commit: str) -> dict:
  got = load(out)
  rows = ["| model | " + " | ".join(f"accuracy {s} (95% CI)" for s in SETTINGS)
          + " | route verdicts | questions | validation | wall (min) |",
          "|---|---|---|---|---|---|---|"]
  summaries = {}
  for name in RUNS:
    p = os.path.join(out, name, "run_summary.json")
    if os.path.exists(p):
      with open(p) as f:
        summaries[name] = json.load(f)
  for name in ("pretrained", *RUNS):
    if name not in got:
      continue
    res = got[name]["results"]
    cells = [f"{res[s]['accuracy']:.3f} ({res[s]['accuracy_ci_low']:.3f} .. "
             f"{res[s]['accuracy_ci_high']:.3f})" for s in SETTINGS]
    ver = res["with routes"].get("verification_accuracy")
    ver = None if ver is None or ver != ver else ver  # NaN: no verdicts to score
    wall = summaries.get(name, {}).get("wall_seconds")
    about = "SmolLM2-135M-Instruct as loaded" if name == "pretrained" else RUNS[name][2]
    rows.append(f"| {name}: {about} | {' | '.join(cells)} | "
                f"{'' if ver is None else f'{ver:.3f}'} | {res['without routes']['n']} | "
                f"{validation(summaries.get(name, {}))} | "
                f"{'' if wall is None else f'{wall / 60:.0f}'} |")
  base = next(iter(got.values()))["baselines"] if got else {}
  for b in dict.fromkeys(k for setting in SETTINGS for k in base.get(setting, {})):
    cells = [f"{base[s][b]:.3f}" if b in base.get(s, {}) else "" for s in SETTINGS]
    rows.append(f"| baseline: {b} | {' | '.join(cells)} | | | | |")
  diffs = {}
  lines = ["| difference | setting | B − A (95% CI) | McNemar p | only B / only A right | n |",
           "|---|---|---|---|---|---|"]
  for b, a in PAIRS:
    if a not in got or b not in got:
      continue
    reproduce_report.check_same_questions(got[a], got[b])
    for s in SETTINGS:
      d = paired.paired_compare(got[a]["results"][s]["correct"], got[b]["results"][s]["correct"])
      diffs[f"{b} - {a} ({s})"] = d.__dict__
      mark = "**" if d.ci_low > 0 or d.ci_high < 0 else ""
      lines.append(f"| {b} − {a} | {s} | {mark}{d.diff:+.3f} ({d.ci_low:+.3f} .. "
                   f"{d.ci_high:+.3f}){mark} | {d.p_value:.3g} | {d.b_only} / {d.a_only} | {d.n} |")
  md = (f"# SmolLM2-135M-Instruct on tariff level 0\n\nCommand: `{command}`  \nCommit: "
        f"`{commit}` (each run's own is in its run_summary.json)\n\nGreedy accuracy on the "
        f"same held-out questions; Wilson 95% intervals. Differences are paired question by "
        f"question (normal interval, exact McNemar p); bold when the interval excludes 0.\n\n"
        + "\n".join(rows) + "\n\n" + "\n".join(lines) + "\n")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(md)
  result = {"command": command, "commit": commit, "differences": diffs,
            "accuracy": {n: {s: g["results"][s]["accuracy"] for s in SETTINGS}
                         for n, g in got.items()}}
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  if summaries:
    plot(summaries, os.path.join(out, "curves.png"))
  return result


def plot(summaries: dict[str, dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  for name, s in summaries.items():
    for ax, key in zip(axes, ("valid_accuracy", "reward")):
      pts = sorted((st, v) for _, st, v in s.get(key, []))
      if pts:  # one colour per run in both panels
        ax.plot(*zip(*pts), marker="o" if key == "valid_accuracy" else None, label=name,
                color=f"C{list(RUNS).index(name)}")
  axes[0].set(title="validation accuracy (greedy, no routes)", xlabel="step of the run's stage")
  axes[1].set(title="RL reward (batch mean)", xlabel="RL step")
  for ax in axes:
    if ax.get_legend_handles_labels()[0]:  # no RL run yet: no reward curve to label
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None, run_cli=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="experiments/results/smollm2")
  p.add_argument("--runs", default="runs/smollm2")
  p.add_argument("--runs-only", default=",".join(RUNS), help="comma-separated run names")
  p.add_argument("overrides", nargs="*", help="for every run, e.g. eval.num_questions=64")
  args = p.parse_args(argv)
  args.runs = os.path.abspath(args.runs)  # recorded as init_from in the RL runs' run.json
  names = [n for n in args.runs_only.split(",") if n]
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    p.error(f"--runs-only: unknown {', '.join(unknown)}; choose from {', '.join(RUNS)}")
  command = "python -m experiments.smollm2 " + " ".join(argv if argv is not None else sys.argv[1:])
  commit = reproduce_report.run_info(command, args.out)["commit"]
  for name in names:
    if os.path.exists(os.path.join(args.out, name, "eval.json")):
      print(f"[smollm2] {name}: kept in {args.out}/{name}, skipped", flush=True)
      continue
    start = RUNS[name][0]
    if start and not os.path.exists(os.path.join(args.runs, start, "DONE")):
      print(f"[smollm2] {name}: its start {args.runs}/{start} is not finished here; run "
            f"{start} first", flush=True)
      return 1
    t0 = time.time()
    print(f"[smollm2] {name}: started", flush=True)
    wd = os.path.join(args.runs, name)
    os.makedirs(wd, exist_ok=True)
    with reproduce_report.timed(wd), open(os.path.join(wd, "smollm2.log"), "a") as log:
      for cli_args in commands(name, args.runs, tuple(args.overrides)):
        if run_cli is not None:
          run_cli(cli_args)
        else:
          log.write(f"$ realm-jax {' '.join(cli_args)}\n")
          log.flush()
          subprocess.run([sys.executable, "-m", "realm_jax", *cli_args], stdout=log,
                         stderr=subprocess.STDOUT, check=True)
        if cli_args[0] == "train" and not os.path.exists(os.path.join(wd, "DONE")):
          print(f"[smollm2] {name}: training stopped before its last step (no DONE in {wd}); "
                "rerun the same command to resume it", flush=True)
          return 1
    keep(name, args.runs, args.out, commit)
    report(args.out, command, commit)
    print(f"[smollm2] {name}: done in {(time.time() - t0) / 60:.1f} min", flush=True)
  report(args.out, command, commit)
  return 0


if __name__ == "__main__":
  sys.exit(main())
