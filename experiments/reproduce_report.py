"""The reproduction's report (`experiments/reproduce.py` rewrites it after every run).

Reads each run's eval.json (training level) and eval_d{L}.json (harder level) and
writes to OUT:
  table.md      per method: accuracy at the training level without and with routes,
                pass@k and maj@k, route verdicts, accuracy at the harder level; the
                paired difference to the control SFT -> GRPO and to SFT -> more SFT at
                both levels, each a two-level bootstrap over seeds and questions
                (`evaluation.paired.bootstrap_over_seeds`); teacher budgets; the
                trivial baselines as rows; the command, commit and wall times
  results.json  the same numbers
  paired.png    the differences to the control with their intervals
  curves.png    validation curves: each seed's SFT start, each method's mean over seeds

Runs compared question by question must have answered the same questions: each
eval.json names its questions' digest, and a mismatch is an error naming both runs.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
import json
import os
import platform
import subprocess
import time

import numpy as np

from realm_jax.evaluation import paired

SETTINGS = (("l0", "without routes"), ("l0", "with routes"), ("l1", "without routes"))


def run_info(command: str, out: str) -> dict:
  """The command, the commit the runs use (taken at start; later commits must not relabel
  the results) and the start time."""
  commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                          f":(exclude){out}"], capture_output=True, text=True).stdout.strip()
  return {"command": command, "commit": commit + (" (plus uncommitted changes)" if dirty else ""),
          "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def correctness(path: str) -> dict[str, list[int]]:
  """Per test setting, the final params' per-question correctness in an eval file."""
  r = _final(path)
  return {k: v["correct"] for k, v in r["results"].items()}


def validation_curve(workdir: str) -> list[list]:
  """[phase, step, validation accuracy] rows of a run's metrics.jsonl (a resumed step once)."""
  rows = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        m = json.loads(line)
        if "valid_accuracy" in m:
          rows[(m["phase"], m["step"])] = m["valid_accuracy"]
  return [[p, s, a] for (p, s), a in rows.items()]


def _final(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    r = json.load(f)
  final = next(v for k, v in r["results"].items() if k.startswith("final"))
  return {"results": final, "baselines": r.get("baselines", {}),
          "questions": r.get("questions_sha256"), "path": path}


def load_run(workdir: str, harder_level: int) -> dict | None:
  """{"l0": eval.json's final, "l1": eval_dL.json's final} of a finished run, else None."""
  l0 = _final(os.path.join(workdir, "eval.json"))
  l1 = _final(os.path.join(workdir, f"eval_d{harder_level}.json"))
  return None if l0 is None or l1 is None else {"l0": l0, "l1": l1}


WALL = "wall.jsonl"


def usable_cpus() -> int:
  """The CPUs this process may run on (all of them where affinity is unknown, e.g. macOS)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# The vector extensions XLA:CPU's kernels are chosen by: the same run on CPUs that differ in
# them (or in jaxlib) can differ in its last bits, in fp32 as in bf16 matmuls.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16")


def host() -> str:
  """This machine as far as XLA:CPU's numbers go: CPU model, ISA_FLAGS present, jaxlib."""
  import jaxlib
  model, flags = "", set()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      info = dict(ln.split(":", 1) for ln in f.read().split("\n\n")[0].splitlines() if ":" in ln)
    info = {k.strip(): v.strip() for k, v in info.items()}
    model, flags = info.get("model name", ""), set(info.get("flags", "").split())
  isa = " ".join(f for f in ISA_FLAGS if f in flags) or "none of " + "/".join(ISA_FLAGS)
  return f"{model or platform.machine()} [{isa}] jaxlib {jaxlib.__version__}"


@contextlib.contextmanager
def timed(workdir: str, cpus: int | None = None):
  """Appends this segment's [start, end, CPUs, host] to WORKDIR/wall.jsonl when it ends,
  stopped or not, so a run resumed across sessions reports the time of all its segments.
  CPUs: those its processes may run on (default: this process's), since XLA:CPU's results
  depend on how many threads split its reductions; host: `host()`, since they depend on
  the CPU's vector instructions too."""
  t0 = time.time()
  cpus = cpus if cpus is not None else usable_cpus()
  try:
    yield
  finally:
    with open(os.path.join(workdir, WALL), "a") as f:
      f.write(json.dumps([round(t0, 1), round(time.time(), 1), cpus, host()]) + "\n")


def wall_summary(workdir: str) -> dict:
  """started (first segment), finished (last), wall_seconds (summed over the segments,
  the gaps between sessions left out), segments, and the CPU counts and hosts the
  segments ran on (where recorded), from WORKDIR/wall.jsonl."""
  with open(os.path.join(workdir, WALL)) as f:
    segs = [json.loads(line) for line in f if line.strip()]
  stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
  return {"wall_seconds": round(sum(s[1] - s[0] for s in segs), 1), "started": stamp(segs[0][0]),
          "finished": stamp(segs[-1][1]), "segments": len(segs),
          "cpus": sorted({s[2] for s in segs if len(s) > 2}),
          "hosts": sorted({s[3] for s in segs if len(s) > 3})}


def retrain_note(kept: dict, now: dict) -> str:
  """Why a start trained again may answer otherwise than its kept summary `kept` says, from
  both runs' CPU counts and hosts (`wall_summary`): bit-for-bit reproduction needs the same
  count in every segment, and the same kind of machine."""
  kc, nc = kept.get("cpus") or "unrecorded", now["cpus"]
  note = (f"both ran on {nc} CPUs" if kc == nc else
          f"XLA:CPU's numbers depend on the CPU count: kept run {kc}, this one {nc}; pin the "
          "rerun to the kept count (taskset)")
  kh, nh = kept.get("hosts") or "unrecorded", now.get("hosts")
  if nh and kh != nh:
    note += (f"; and on the machine's vector instructions: kept run on {kh}, this one on {nh}; "
             "run a seed's starts and the runs from them on one kind of machine")
  return note


def routes_shown(workdir: str) -> int:
  """Routes the RL stage put into prompts (sum over steps of prompts with routes x routes
  each), from metrics.jsonl; a resumed step counts once."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  per_step, run = {}, {}
  if os.path.exists(os.path.join(workdir, "run.json")):
    with open(os.path.join(workdir, "run.json")) as f:
      run = json.load(f)
  prompts = run.get("config", {}).get("rl", {}).get("batch_prompts", 16)
  with open(path) as f:
    for line in f:
      m = json.loads(line)
      if m.get("phase") == "rl" and "p_routes" in m:
        per_step[m["step"]] = m["p_routes"] * prompts * m.get("num_routes", 0)
  return int(round(sum(per_step.values())))


def teacher_cots(name: str, level: int = 0) -> str:
  """The teacher CoTs a method consumed through its starts: the base warm-up reads 400 of
  the 2,000 that SFT distils (SFT also shows a quarter of them with their route pools); at
  `level` > 0 more SFT draws its updates from as many CoTs of that level."""
  from experiments import evidence, reproduce
  chain = reproduce.with_starts([name])
  cfg = evidence.get_config()
  more = f" + {cfg.sft.num_items:,} of level {level}" if level and name == "more_sft" else ""
  return (f"{cfg.sft.num_items:,}" if "sft" in chain else f"{cfg.base.num_items:,}") + more


def check_same_questions(a: dict, b: dict) -> None:
  if a["questions"] != b["questions"]:
    raise ValueError(f"{a['path']} and {b['path']} evaluated different questions "
                     f"(digests {a['questions']} and {b['questions']}): they cannot be paired")


def difference(runs_a: list[dict | None], runs_b: list[dict | None], level: str,
               setting: str) -> paired.BootstrapResult | None:
  """B - A, per seed question by question, over the seeds both finished. Seeds tested on
  the same questions (equal digests) share each bootstrap replicate's question resample."""
  diffs, digests = [], set()
  for a, b in zip(runs_a, runs_b):
    if a is None or b is None:
      continue
    check_same_questions(a[level], b[level])
    digests.add(a[level]["questions"])
    ca = np.asarray(a[level]["results"][setting]["correct"], float)
    cb = np.asarray(b[level]["results"][setting]["correct"], float)
    diffs.append(cb - ca)
  return (paired.bootstrap_over_seeds(diffs, shared_questions=len(digests) == 1)
          if diffs else None)


def summarize(per: dict[str, list[dict | None]], k: int, controls: tuple[str, ...]) -> dict:
  out = {}
  for name, runs in per.items():
    done = [r for r in runs if r is not None]
    if not done:
      continue
    row = {"seeds": len(done)}
    for level, setting in SETTINGS:
      row[f"{level} {setting}"] = float(np.mean([r[level]["results"][setting]["accuracy"]
                                                 for r in done]))
    for metric in (f"pass@{k}", f"maj@{k}"):
      vals = [r["l0"]["results"]["without routes"].get(metric) for r in done]
      row[metric] = float(np.mean(vals)) if None not in vals else None
    ver = [r["l0"]["results"]["with routes"].get("verification_accuracy") for r in done]
    row["route verdicts"] = float(np.nanmean(ver)) if None not in ver else None
    for control in controls:
      if control == name or control not in per:
        continue
      for level in ("l0", "l1"):
        d = difference(per[control], runs, level, "without routes")
        row[f"{level} - {control}"] = None if d is None else d.__dict__
    out[name] = row
  return out


def against(per: dict[str, list[dict | None]], ref: str = "realm_r1") -> dict:
  """Each other method minus `ref`, paired, per (level, setting): how ReaLM-R1 compares with
  each ablation, with CoT-synthesizer style (with routes, the paper's claim) and with GRPO."""
  out = {}
  if ref not in per:
    return out
  for name, runs in per.items():
    if name in (ref, "base", "realm_zero"):
      continue
    row = {}
    for level, setting in SETTINGS:
      d = difference(per[ref], runs, level, setting)
      row[f"{level} {setting}"] = None if d is None else d.__dict__
    if any(row.values()):
      out[name] = row
  return out


def against_table(rows: dict, levels: tuple[int, int]) -> str:
  l0, l1 = levels
  lines = [f"| method − ReaLM-R1 | L{l0} no routes | L{l0} with routes | L{l1} no routes |",
           "|---|---|---|---|"]
  for name, r in rows.items():
    lines.append(f"| {name} | " + " | ".join(ci_cell(r[f"{lv} {st}"]) for lv, st in SETTINGS) + " |")
  return "\n".join(lines) + "\n"


def baselines(per: dict[str, list[dict | None]]) -> dict[str, dict[str, float]]:
  """Each trivial baseline's mean over seeds, per level and test setting."""
  vals: dict[str, dict[str, list[float]]] = {}
  for runs in per.values():
    for seed_run in runs:
      if seed_run is None:
        continue
      for level in ("l0", "l1"):
        for setting, rows in seed_run[level]["baselines"].items():
          for b, acc in rows.items():
            vals.setdefault(f"{level} {setting}", {}).setdefault(b, []).append(acc)
      break  # one run per seed: every run of a seed shares its questions
  return {key: {b: float(np.mean(v)) for b, v in rows.items()} for key, rows in vals.items()}


def ci_cell(d: dict | None) -> str:
  """A paired difference with its interval, bold when the interval excludes 0."""
  if d is None:
    return ""
  mark = "**" if d["ci_low"] > 0 or d["ci_high"] < 0 else ""
  return f"{mark}{d['diff']:+.3f} ({d['ci_low']:+.3f} .. {d['ci_high']:+.3f}){mark}"


def _f(x) -> str:
  return "" if x is None else f"{x:.3f}"


def table(summary: dict, base: dict, k: int, levels: tuple[int, int], about: dict,
          budgets: dict) -> str:
  l0, l1 = levels
  head = (f"| method | seeds | L{l0} no routes | L{l0} with routes | pass@{k} | maj@{k} | route verdicts "
          f"| L{l1} no routes | L{l0} − GRPO | L{l1} − GRPO | L{l0} − more SFT | L{l1} − more SFT "
          f"| teacher CoTs | routes shown in RL (mean) |")
  lines = [head, "|" + "---|" * 14]
  for name, r in summary.items():
    lines.append(
        f"| {name}: {about[name]} | {r['seeds']} | {_f(r[f'l0 without routes'])} | "
        f"{_f(r['l0 with routes'])} | {_f(r[f'pass@{k}'])} | {_f(r[f'maj@{k}'])} | "
        f"{_f(r['route verdicts'])} | {_f(r['l1 without routes'])} | {ci_cell(r.get('l0 - grpo'))} | "
        f"{ci_cell(r.get('l1 - grpo'))} | {ci_cell(r.get('l0 - more_sft'))} | {ci_cell(r.get('l1 - more_sft'))} "
        f"| {budgets[name]['cots']} | {budgets[name]['routes']:,.0f} |")
  names = sorted({b for rows in base.values() for b in rows})
  for b in names:
    lines.append(f"| baseline: {b} | | {_f(base.get('l0 without routes', {}).get(b))} | "
                 f"{_f(base.get('l0 with routes', {}).get(b))} | | | | "
                 f"{_f(base.get('l1 without routes', {}).get(b))} | | | | | | |")
  return "\n".join(lines) + "\n"


def plot(summary: dict, path: str, levels: tuple[int, int]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = [n for n in summary if summary[n].get("l0 - grpo")]
  fig, axes = plt.subplots(1, 2, figsize=(12, max(3, 0.45 * len(names) + 1.5)), sharey=True)
  for ax, level, lv in zip(axes, ("l0", "l1"), levels):
    ds = [summary[n][f"{level} - grpo"] for n in names]
    y = np.arange(len(names))
    x = [d["diff"] for d in ds]
    err = [[d["diff"] - d["ci_low"] for d in ds], [d["ci_high"] - d["diff"] for d in ds]]
    ax.errorbar(x, y, xerr=err, fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_title(f"level {lv}: accuracy without routes − SFT → GRPO")
    ax.set_xlabel("paired difference (95% bootstrap CI over seeds and questions)")
  axes[0].set_yticks(np.arange(len(names)), names)
  axes[0].invert_yaxis()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(out: str, seeds: int, names: list[str], sched, info: dict) -> dict:
  """Rewrites OUT/table.md, results.json, paired.png and curves.png from the kept results of
  every finished run (`reproduce.result_dir`), whichever session produced them."""
  from experiments import convergence, reproduce
  per = {n: [load_run(reproduce.result_dir(out, s, n), sched.harder_level) for s in range(seeds)]
         for n in names}
  controls = tuple(c for c in ("grpo", "more_sft") if c in names)
  summary = summarize(per, sched.k, controls)
  base = baselines(per)
  levels = (sched.level, sched.harder_level)
  runs = {}
  for s in range(seeds):
    for n in names:
      p = os.path.join(reproduce.result_dir(out, s, n), "run_summary.json")
      if os.path.exists(p):
        with open(p) as f:
          runs[(s, n)] = json.load(f)
  budgets = {n: {"cots": teacher_cots(n, sched.level),
                 "routes": float(np.mean([r["routes_shown"] for (s, m), r in runs.items() if m == n]
                                         or [0]))} for n in names}
  seed_wall = {}
  for s in range(seeds):
    rs = [r for (s2, _), r in runs.items() if s2 == s]
    if len(rs) == len(names):
      t = [calendar.timegm(time.strptime(r[k], "%Y-%m-%d %H:%M:%S UTC")) for r in rs
           for k in ("started", "finished")]
      seed_wall[s] = {"wall_minutes": (max(t) - min(t)) / 60,
                      "run_minutes": sum(r["wall_seconds"] for r in rs) / 60,
                      "commits": sorted({r["commit"] for r in rs})}
  about = {n: reproduce.METHODS[n].about for n in names}
  done = ", ".join(f"seed {s}: {w['wall_minutes']:.0f} min wall ({w['run_minutes']:.0f} min of runs)"
                   for s, w in seed_wall.items()) or "none yet"
  md = (f"# The reproduction in the evidence setting\n\n"
        f"Command: `{info['command']}`  \nCommit of this report: `{info['commit']}`; each run's "
        f"commit is in its `runs/seed*/*/run_summary.json`  \n"
        f"Seeds asked: {seeds}; finished: {done}. Schedule: SFT {sched.sft_steps} steps"
        f"{' (batches within one length bucket)' if sched.sft_grouped else ''}, RL "
        f"{sched.rl_steps} steps of 16 x 8 at lr {sched.rl_lr:g}"
        f"{f'; RL and more SFT at level {sched.level}, from level-0 starts' if sched.level else ''}"
        ".\n\n"
        f"Accuracy: greedy, mean over the seeds a row finished (its seeds column). Differences: "
        f"paired, question by question within a seed, over the seeds both runs finished, mean "
        f"over seeds, 95% two-level bootstrap interval (seeds, and questions: one resample "
        f"shared by every seed when the seeds were tested on the same questions, as their "
        f"eval files' digests say); bold when it excludes 0. Teacher CoTs: those a method's starts "
        f"distilled (the base warm-up reads 400 of SFT's 2,000; SFT shows a quarter of its "
        f"items with their route pools and gold verdicts). Routes shown in RL: prompts with "
        f"routes x routes each, summed over steps.\n\n"
        + table(summary, base, sched.k, levels, about, budgets))
  vs_r1 = against(per)
  if vs_r1:
    md += ("\nEvery other method against ReaLM-R1, paired as above (negative: ReaLM-R1 is "
           "better):\n\n" + against_table(vs_r1, levels))
  conv = convergence.per_run(runs)
  md += ("\nConvergence: each run's best validation accuracy (at step / of steps) and its late "
         "gain, the best of its last fifth of steps minus the best before (> 0: still "
         "improving when it ended):\n\n" + convergence.table(conv, seeds))
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(md)
  result = {**info, "seeds": seeds, "schedule": {"sft_steps": sched.sft_steps,
                                                 "sft_grouped": sched.sft_grouped,
                                                 "rl_steps": sched.rl_steps, "rl_lr": sched.rl_lr,
                                                 "k": sched.k, "levels": list(levels)},
            "seed_wall": seed_wall, "summary": summary, "against_realm_r1": vs_r1,
            "baselines": base, "teacher_budget": budgets, "convergence": conv}
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=2)
  convergence.plot(runs, os.path.join(out, "curves.png"))
  if any(r.get("l0 - grpo") for r in summary.values()):
    plot(summary, os.path.join(out, "paired.png"), levels)
  return result
