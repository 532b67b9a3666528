"""`make reproduce`: every method of docs/method.md §6 in the evidence setting, paired, on
several seeds; `make reproduce-quick` runs one seed of the same schedule.

    python -m experiments.reproduce --seeds 3                # make reproduce
    python -m experiments.reproduce --seeds 1 --methods more_sft,grpo,realm_r1
                                                             # make reproduce-quick

Per seed s, under RUNS/seed{s}/ (`experiments/evidence.py`: the tiny model from
scratch on tariff level 0, 2,000 teacher CoTs, 10,000 RL questions with gold
answers, 256 validation and 512 test questions, drawn once (`data.seed`) and shared
by every seed; the seed sets the initialisation, the data order and the sampling):

    base        the format warm-up from scratch (80 steps on 400 of the CoTs)
    sft         guided distillation from `base` on the 2,000 CoTs (4,500 steps, batches
                drawn within one length bucket), validated and kept at its best: the start
                every method below shares
    more_sft    control: as many more SFT updates as RL takes steps
    grpo        control: GRPO, never routes
    rft, cot_synth, realm_r1 and its ablations     from `sft`, the same RL sample budget
    realm_zero  MRPV + EAAI from `base` (the "no distillation" ablation)

Every run is then evaluated on the test questions at the training level (with and
without routes, pass@k and maj@k without) and at level 1 without routes, harder than
anything trained. `experiments/reproduce_report.py` pairs the methods question by question
and writes the table, the plot and the wall times to OUT.

`--level 1 --starts runs/reproduce_bf16` (`make reproduce-level1`) asks where routes carry
what the start lacks: the same base and SFT starts (copied, not trained again), then RL
and more SFT on level 1, whose express and fragile rules SFT never distilled (only the
routes, and more SFT's level-1 CoTs, show them), every run evaluated at level 1 and 2.

Runs are subprocesses of the CLI, `--jobs` at a time. A finished run's eval files
and summary are kept under OUT/runs/seed{s}/NAME (small; committed), so a rerun,
in this session or a later one on a machine without the run directories, runs
only what is missing: an interrupted run resumes from its last checkpoint, and a
finished start whose params are gone is trained again and must answer exactly as
its kept results say. Kept results and run directories made under other overrides
are refused, not reused. A failed run fails only the runs that start from it. The
report is rewritten after every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import shutil
import sys
import time
from collections import Counter

from experiments.run_queue import cpu_slots, require_done, run_call, schedule_runs

# ReaLM-R1's RL: MRPV prompts faded by EAAI, with the route-contrast term.
R1 = ("rl.routes=eaai", "rl.mrpv.w_ver=0.5", "rl.mrpv.contrast_coef=0.1")


@dataclasses.dataclass(frozen=True)
class Method:
  experiment: str
  start: str | None  # the method whose final params it starts from (init_from)
  overrides: tuple[str, ...]
  about: str


METHODS: dict[str, Method] = {
    "base": Method("evidence", None, ("sft.steps=0",),
                   "format warm-up from scratch (80 steps on 400 of the CoTs)"),
    "sft": Method("evidence", "base", ("base.steps=0",),
                  "guided distillation on the 2,000 CoTs, best validation kept: the shared start"),
    "more_sft": Method("evidence_more_sft", "sft", (), "control: SFT -> more SFT"),
    "grpo": Method("evidence_rl", "sft", ("rl.routes=never",), "control: SFT -> GRPO, no routes"),
    "rft": Method("evidence_rl", "sft", ("rl.steps=0",), "RFT: SFT on its own correct samples"),
    "cot_synth": Method("evidence_rl", "sft", ("rl.routes=always", "rl.mrpv.w_ver=0",
                                               "rl.mrpv.contrast_coef=0"),
                        "CoT-synthesizer style: routes always, no verification reward"),
    "realm_r1": Method("evidence_rl", "sft", R1, "ReaLM-R1: MRPV + EAAI from the SFT start"),
    "no_negatives": Method("evidence_rl", "sft", (*R1, "rl.negatives=false"),
                           "ablation: positive routes only"),
    "no_fading": Method("evidence_rl", "sft", (*R1, "rl.routes=always"),
                        "ablation: routes never faded"),
    "no_verification": Method("evidence_rl", "sft", (*R1, "rl.mrpv.w_ver=0"),
                              "ablation: no verification reward"),
    "no_contrast": Method("evidence_rl", "sft", (*R1, "rl.mrpv.contrast_coef=0"),
                          "ablation: no route-contrast term"),
    "realm_zero": Method("evidence_rl", "base", R1,
                         "ReaLM-Zero: MRPV + EAAI from the base (ablation: no distillation)"),
}
CONTROL = "grpo"
STARTS = ("base", "sft")  # trained at level 0 whatever the schedule's level


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The sizes every seed shares. RL methods take `rl_steps` steps of 16 prompts x 8
  samples, validating every `rl_steps // 10` and keeping their best params (no early stop:
  it would cut EAAI's fade short, since validation shows no routes); the control
  SFT -> more SFT takes as many SFT updates, validated alike; RFT draws the same samples
  (2 rounds of rl_steps * 8 questions x 8) for as many updates."""
  sft_steps: int = 4500
  sft_grouped: bool = True  # SFT batches drawn within one prompt-length bucket
  rl_steps: int = 60
  rl_lr: float = 1e-4
  k: int = 4  # pass@k and maj@k at the training level
  level: int = 0  # RL, more SFT and every evaluation at this level; base and SFT at level 0
  extra: tuple[str, ...] = ()  # overrides for every run (e.g. smaller eval sets in tests)

  @property
  def harder_level(self) -> int:
    """The level every run is also tested at: the next one."""
    return self.level + 1

  def overrides(self, name: str) -> list[str]:
    m = METHODS[name]
    sized = {"sft": [f"sft.steps={self.sft_steps}", f"sft.eval_every={max(1, self.sft_steps // 15)}",
                     "sft.patience=0", "sft.route_share=0.25",
                     *(["sft.group_by_bucket=true"] if self.sft_grouped else [])],
             # the control's updates: as many as RL's, at RL's learning rate and validation
             "more_sft": [f"sft.steps={self.rl_steps}", f"sft.lr={self.rl_lr}",
                          f"sft.warmup={max(1, self.rl_steps // 8)}",
                          f"sft.eval_every={max(1, self.rl_steps // 10)}"],
             "rft": ["rft.rounds=2", f"rft.questions={self.rl_steps * 8}",
                     "rft.samples_per_question=8", f"rft.steps_per_round={self.rl_steps // 2}",
                     "rft.batch_size=16", "rft.lr=1e-4", "rft.warmup=5"]}.get(name, [])
    if m.experiment == "evidence_rl" and name != "rft":
      sized = [f"rl.steps={self.rl_steps}", f"rl.lr={self.rl_lr}",
               f"rl.warmup={max(1, self.rl_steps // 8)}",
               f"rl.eval_every={max(1, self.rl_steps // 10)}"]
    return [*sized, *(self.at_level() if name not in STARTS else []), *self.extra, *m.overrides]

  def at_level(self, harder: bool = False) -> list[str]:
    """The overrides of the runs trained, and of every run evaluated, at `level` 1: its
    questions, and room for them. Measured with the starts' tokenizer, a level-1 prompt
    with two routes takes up to 359 tokens (a fifth over the tiny setting's 320, whose
    tail alone would be kept), a teacher CoT up to 147 (a level-2 one up to 370)."""
    if not self.level:
      return []
    return [f"data.difficulty={self.level}", "data.prompt_buckets=96,160,256,320,384",
            "rl.max_new_tokens=192", f"eval.max_new_tokens={384 if harder else 192}"]


def run_dir(runs: str, seed: int, name: str) -> str:
  return os.path.join(runs, f"seed{seed}", name)


def commands(name: str, seed: int, runs: str, sched: Schedule) -> list[list[str]]:
  """The CLI calls of one run: train (resumes), eval at the training level, eval harder."""
  m, wd = METHODS[name], run_dir(runs, seed, name)
  start = [f"init_from={run_dir(runs, seed, m.start)}"] if m.start else []
  train = ["train", m.experiment, "--workdir", wd, f"seed={seed}", *start, *sched.overrides(name)]
  extra = list(sched.extra)
  # only what the report reads: pass@k and maj@k without routes, the harder level without
  return [train,
          ["eval", "--workdir", wd, "eval.final_only=true", f"eval.k={sched.k}",
           "eval.sample_routes=without", *sched.at_level(), *extra],
          ["eval", "--workdir", wd, "eval.final_only=true", "eval.k=1", "eval.routes=without",
           f"eval.difficulty={sched.harder_level}", *sched.at_level(harder=True), *extra]]


RESULT_FILES = ("eval.json", "eval_d{level}.json", "run_summary.json")


def result_dir(out: str, seed: int, name: str) -> str:
  """Where a finished run's results are kept (committed: later sessions resume from them)."""
  return os.path.join(out, "runs", f"seed{seed}", name)


def result_files(sched: Schedule) -> list[str]:
  return [f.format(level=sched.harder_level) for f in RESULT_FILES]


def finished(out: str, seed: int, name: str, sched: Schedule) -> bool:
  return all(os.path.exists(os.path.join(result_dir(out, seed, name), f))
             for f in result_files(sched))


def has_params(runs: str, seed: int, name: str) -> bool:
  return os.path.exists(os.path.join(run_dir(runs, seed, name), "DONE"))


def to_run(names: list[str], seeds: int, out: str, runs: str, sched: Schedule) -> list[tuple[int, str]]:
  """The runs to execute: every unfinished one, and every finished one whose params an
  unfinished run starts from but this machine no longer has (it is trained again, and its
  new results must equal the kept ones: `keep_results`)."""
  tasks = []
  for seed in range(seeds):
    need = {n for n in names if not finished(out, seed, n, sched)}
    for n in list(need):
      start = METHODS[n].start
      while start is not None and not has_params(runs, seed, start):
        need.add(start)
        start = METHODS[start].start
    tasks += [(seed, n) for n in names if n in need]
  return tasks


OVERRIDES_FILE = "reproduce.json"  # in a run directory: the overrides it was trained under


def _recorded(path: str) -> list[str] | None:
  """The overrides a kept summary or a run directory records (None: unrecorded)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rec = json.load(f).get("overrides")
  return None if rec is None else list(rec)


def copy_starts(names: list[str], seeds: int, runs: str, starts: str, sched: Schedule) -> None:
  """Copies the finished runs others start from (base, sft) out of another reproduction's run
  directories when this one lacks them, if made under the same overrides: `--level 1 --starts
  runs/reproduce_bf16` reuses `make reproduce`'s level-0 starts instead of training them again."""
  for seed in range(seeds):
    for n in [n for n in names if any(METHODS[m].start == n for m in names)]:
      src, dst = run_dir(starts, seed, n), run_dir(runs, seed, n)
      if has_params(runs, seed, n) or not has_params(starts, seed, n):
        continue
      have = _recorded(os.path.join(src, OVERRIDES_FILE))
      if have != sched.overrides(n):
        raise ValueError(f"{src}: made with overrides {have} where this reproduction's {n} has "
                         f"{sched.overrides(n)}; drop --starts")
      if os.path.exists(dst):
        raise ValueError(f"{dst}: unfinished; delete it to copy {src} there, or drop --starts")
      shutil.copytree(src, dst)


def check_same_overrides(names: list[str], seeds: int, out: str, runs: str,
                         sched: Schedule) -> None:
  """Refuses, naming the file and the overrides that differ, to reuse a kept result or a run
  directory made under other overrides (another schedule or `model.matmul_dtype`): it would
  count as finished, or serve as a start, in a reproduction it does not belong to."""
  for seed in range(seeds):
    for n in names:
      want = sched.overrides(n)
      for path in (os.path.join(result_dir(out, seed, n), "run_summary.json"),
                   os.path.join(run_dir(runs, seed, n), OVERRIDES_FILE)):
        have = _recorded(path)
        if have is None or have == want:
          continue
        # the same overrides in another order differ too: of two settings of a key, the last wins
        extra, missing = Counter(have) - Counter(want), Counter(want) - Counter(have)
        what = (f"{list(extra.elements()) or 'nothing'} where this reproduction has "
                f"{list(missing.elements()) or 'nothing'}" if extra or missing else
                f"them in the order {have} where this reproduction has {want}")
        raise ValueError(f"{path}: made with {what}; give it its own --out and --runs")


def keep_results(name: str, seed: int, runs: str, out: str, sched: Schedule, commit: str
                 ) -> None:
  """Copies a run's eval files and a summary (wall time, routes shown, validation curve)
  into `result_dir`. A run trained again only as a start must reproduce its kept answers."""
  from experiments import reproduce_report
  wd, rd = run_dir(runs, seed, name), result_dir(out, seed, name)
  evals = [f for f in result_files(sched) if f.startswith("eval")]
  if finished(out, seed, name, sched):
    for f in evals:
      old, new = (reproduce_report.correctness(os.path.join(d, f)) for d in (rd, wd))
      if old != new:
        raise RuntimeError(f"{wd}/{f}: trained again, it answers differently from {rd}/{f}; "
                           f"this machine does not reproduce seed {seed}: delete {rd}/.. and rerun "
                           f"it ({_cpu_note(wd, rd)})")
    return
  os.makedirs(rd, exist_ok=True)
  for f in evals:
    shutil.copyfile(os.path.join(wd, f), os.path.join(rd, f))
  summary = {**reproduce_report.wall_summary(wd), "commit": commit,
             "routes_shown": reproduce_report.routes_shown(wd),
             "validation": reproduce_report.validation_curve(wd),
             "overrides": sched.overrides(name)}
  with open(os.path.join(rd, "run_summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


def _cpu_note(wd: str, rd: str) -> str:
  from experiments import reproduce_report
  with open(os.path.join(rd, "run_summary.json")) as f:
    return reproduce_report.retrain_note(json.load(f), reproduce_report.wall_summary(wd))


def execute(name: str, seed: int, runs: str, sched: Schedule, cache: str, run_cli=None,
            cpus: set[int] | None = None) -> None:
  """Runs one method's commands, each a subprocess logged to the workdir's reproduce.log
  and pinned to `cpus` when given (or `run_cli(args)` in this process). Each call's time is
  added to the run's wall.jsonl, stopped or not (`reproduce_report.wall_summary`). A finished
  run is only evaluated."""
  from experiments import reproduce_report
  wd = run_dir(runs, seed, name)
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, OVERRIDES_FILE), "w") as f:
    json.dump({"overrides": sched.overrides(name)}, f)
  n_cpus = len(cpus) if cpus else reproduce_report.usable_cpus()
  with reproduce_report.timed(wd, n_cpus), open(os.path.join(wd, "reproduce.log"), "a") as log:
    for args in commands(name, seed, runs, sched):
      if args[0] == "train" and has_params(runs, seed, name):
        continue  # finished (here, or copied by `copy_starts`): train would only resume to its end
      run_call(args, log, cache, run_cli, cpus)
      if args[0] == "train":
        require_done(wd)


def main(argv: list[str] | None = None, run_cli=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="experiments/results/reproduce")
  p.add_argument("--runs", default="runs/reproduce")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--jobs", type=int, default=1,
                 help="runs at once, each pinned to its share of the CPUs (default 1)")
  p.add_argument("--methods", default=",".join(METHODS),
                 help="comma-separated; the runs they start from are added")
  p.add_argument("--starts", metavar="RUNS",
                 help="another reproduction's --runs: its finished base and SFT starts are copied")
  add_schedule_args(p)
  p.add_argument("overrides", nargs="*", help="for every run, e.g. eval.num_questions=64")
  args = p.parse_args(argv)
  from experiments import reproduce_report
  unknown = [m for m in args.methods.split(",") if m and m not in METHODS]
  if unknown:
    p.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
  names = with_starts([m for m in args.methods.split(",") if m])
  sched = schedule_from(args, args.overrides)
  command = "python -m experiments.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
  info = reproduce_report.run_info(command, args.out)
  try:
    if args.starts:
      copy_starts(names, args.seeds, args.runs, args.starts, sched)
    check_same_overrides(names, args.seeds, args.out, args.runs, sched)
  except ValueError as e:
    print(f"reproduce: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(args.runs, exist_ok=True)
  cache = os.path.abspath(os.path.join(args.runs, "xla_cache"))
  tasks = to_run(names, args.seeds, args.out, args.runs, sched)
  t0 = time.time()
  slots, pinned = queue.Queue(), cpu_slots(args.jobs) if run_cli is None else []
  for cpus in pinned:
    slots.put(cpus)

  def work(task):
    seed, name = task
    cpus = slots.get() if pinned else None  # at most `jobs` runs hold one: never waits
    print(f"[reproduce] seed {seed} {name}: started ({(time.time() - t0) / 60:.1f} min)"
          + (f" on CPUs {sorted(cpus)}" if cpus else ""), flush=True)
    try:
      execute(name, seed, args.runs, sched, cache, run_cli, cpus)
    finally:
      if cpus:
        slots.put(cpus)
    keep_results(name, seed, args.runs, args.out, sched, info["commit"])

  def on_done(task, status):
    print(f"[reproduce] seed {task[0]} {task[1]}: {status} ({(time.time() - t0) / 60:.1f} min)",
          flush=True)
    reproduce_report.write(args.out, args.seeds, names, sched, info)

  start_of = lambda t: (t[0], METHODS[t[1]].start) if METHODS[t[1]].start else None
  in_tasks = set(tasks)  # a task waits for its start only when the start runs too
  status = schedule_runs(tasks, lambda t: start_of(t) if start_of(t) in in_tasks else None,
                         args.jobs, work, on_done)
  reproduce_report.write(args.out, args.seeds, names, sched, info)
  failed = {t: s for t, s in status.items() if s != "ok"}
  for (seed, name), s in failed.items():
    print(f"[reproduce] seed {seed} {name}: {s} (log: {run_dir(args.runs, seed, name)}/reproduce.log)")
  return 1 if failed else 0


def add_schedule_args(p: argparse.ArgumentParser) -> None:
  """The schedule's sizes, for every driver that runs or reads a reproduction's runs."""
  p.add_argument("--sft-steps", type=int, default=Schedule.sft_steps)
  p.add_argument("--sft-ungrouped", action="store_true",
                 help="SFT batches drawn across length buckets (the schedules before 4,500 steps)")
  p.add_argument("--rl-steps", type=int, default=Schedule.rl_steps)
  p.add_argument("--rl-lr", type=float, default=Schedule.rl_lr)
  p.add_argument("--level", type=int, default=Schedule.level, choices=(0, 1),
                 help="RL, more SFT and every evaluation at this level (harder: the next one); "
                      "base and SFT stay at level 0")


def schedule_from(args: argparse.Namespace, extra) -> Schedule:
  return Schedule(sft_steps=args.sft_steps, sft_grouped=not args.sft_ungrouped,
                  rl_steps=args.rl_steps, rl_lr=args.rl_lr, level=args.level,
                  extra=tuple(extra))


def with_starts(names: list[str]) -> list[str]:
  """`names` plus every run they start from, each after its start."""
  out: list[str] = []
  for n in names:
    chain = [n]
    while METHODS[chain[-1]].start:
      chain.append(METHODS[chain[-1]].start)
    out += [m for m in reversed(chain) if m not in out]
  return out


if __name__ == "__main__":
  sys.exit(main())
