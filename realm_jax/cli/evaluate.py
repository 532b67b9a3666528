"""`realm-jax eval --workdir DIR`: evaluates a run's starting point and final params
and writes eval.json, eval.md and PNG plots into the workdir.

`eval.difficulty=N` tests on questions of another difficulty level of the run's
domain (generalisation to more steps than were trained), minus any question the
run trained or validated on, and writes eval_dN.json / eval_dN.md instead.

It writes nothing else there: the run's tokenizer and params are only read
(`train.prepare(create=False)`), and a run with no finished stage is refused
before any data is built or model loaded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax

from realm_jax.cli import plots, train
from realm_jax.train import sharding
from realm_jax.evaluation import baselines, paired, report
from realm_jax.evaluation.accuracy import ROUTE_SETTINGS, evaluate_params, results_table
from realm_jax.rl import corpus

SETTING_NAMES = {False: "without routes", True: "with routes"}


def run(workdir: str, overrides: list[str] | None = None) -> dict:
  """Evaluates the run's starting point and final params; writes eval.json/eval.md/plots."""
  run_info = train.load_run_info(workdir)
  if not train.finished_phases(workdir):
    raise FileNotFoundError(f"{workdir} has no finished stage (params/{{{','.join(train.PHASES)}}}"
                            "): train it to the end of a stage first")
  cfg = train.load_config(workdir, overrides)
  mesh = train.make_mesh(cfg.mesh)
  with sharding.use_mesh(mesh):
    ctx = train.prepare(cfg, workdir, mesh, create=False)
    name = "eval"
    if cfg.eval.difficulty is not None and cfg.eval.difficulty != cfg.data.difficulty:
      ctx, name = other_level(ctx, cfg.eval.difficulty), f"eval_d{cfg.eval.difficulty}"
    return _run(workdir, run_info, cfg, ctx, name)


def other_level(ctx, difficulty: int):
  """The run's context with test questions of level `difficulty` of the same source, minus
  any question the run trained or validated on; the mode baseline reads 2,000 training
  questions of that level."""
  data_cfg = dataclasses.replace(ctx.cfg.data, difficulty=difficulty, num_train=2000, num_valid=0,
                                 num_eval=ctx.cfg.data.num_eval + ctx.cfg.eval.num_questions)
  level = corpus.build_run_data(data_cfg)
  seen = {ex.question for ex in ctx.data.train + ctx.data.valid}
  fresh = [ex for ex in level.eval if ex.question not in seen]
  report = dict(ctx.data.report, eval_difficulty=difficulty, num_eval=len(fresh))
  return dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, eval=fresh, train=level.train,
                                                           report=report))


def _run(workdir: str, run_info: dict, cfg, ctx, out_name: str = "eval") -> dict:
  results: dict[str, dict[str, dict[str, float]]] = {}
  stages = train.stage_params(ctx, workdir)
  if cfg.eval.final_only:
    stages = {k: v for k, v in stages.items() if k.startswith("final")}
  for stage, params in stages.items():
    results[stage] = {}
    for with_routes in ROUTE_SETTINGS[cfg.eval.routes]:
      results[stage][SETTING_NAMES[with_routes]] = evaluate_params(
          params, ctx.model_cfg, ctx.tokenizer, ctx.data.eval[:cfg.eval.num_questions], cfg.eval,
          cfg.rl.mrpv, with_routes=with_routes, seed=cfg.seed, chat=ctx.chat,
          sample=with_routes in ROUTE_SETTINGS[cfg.eval.sample_routes])
  trivial = _baselines(cfg, ctx)
  table = results_table(results, cfg.eval.k, trivial)
  compared = paired_results(results)
  if compared:
    table += "\n" + paired_table(compared)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"{out_name}.json"), "w") as f:
      json.dump({"experiment": run_info.get("experiment"),
                 "difficulty": ctx.data.report.get("eval_difficulty", cfg.data.difficulty),
                 # which questions, in order: runs compared question by question must agree
                 "questions_sha256": questions_digest(ctx.data.eval[:cfg.eval.num_questions]),
                 "results": results,
                 "baselines": trivial,
                 "paired": {k: dataclasses.asdict(v) for k, v in compared.items()}}, f, indent=2)
    with open(os.path.join(workdir, f"{out_name}.md"), "w") as f:
      f.write(f"# {run_info.get('experiment')} ({workdir}, {out_name})\n\n{table}")
    if out_name == "eval":
      plots.plot_training(workdir)
  print(table)
  return results


def questions_digest(examples) -> str:
  return hashlib.sha256("\n\x1e".join(ex.question for ex in examples).encode()).hexdigest()


def paired_results(results: dict) -> dict[str, paired.PairedResult]:
  """Final against start, per test setting, on the same questions (McNemar, paired CI)."""
  start = next((v for k, v in results.items() if k.startswith("start")), None)
  final = next((v for k, v in results.items() if k.startswith("final")), None)
  if start is None or final is None:
    return {}
  return {setting: paired.paired_compare(start[setting]["correct"], final[setting]["correct"])
          for setting in final if setting in start}


def paired_table(compared: dict[str, paired.PairedResult]) -> str:
  rows = [[setting, f"{r.acc_a:.3f}", f"{r.acc_b:.3f}",
           f"{r.diff:+.3f} ({r.ci_low:+.3f} .. {r.ci_high:+.3f})", f"{r.p_value:.3g}",
           f"{r.b_only} / {r.a_only}", r.n] for setting, r in compared.items()]
  return report.markdown_table(["final - start, paired", "start", "final", "difference (95% CI)",
                                "McNemar p", "only final / only start right", "questions"], rows)


def _baselines(cfg, ctx) -> dict[str, dict[str, float]]:
  """Trivial baselines on the evaluated questions, the mode taken on the train questions; with
  routes, "copy a shown route" reads the routes `evaluate_params` shows."""
  examples, doms = ctx.data.eval[:cfg.eval.num_questions], baselines.source_domains(cfg.data.source)
  out = {}
  for with_routes in ROUTE_SETTINGS[cfg.eval.routes]:
    out[SETTING_NAMES[with_routes]] = (
        baselines.trivial_baselines(examples, ctx.data.train, doms, cfg.rl.mrpv, cfg.seed)
        if with_routes else baselines.trivial_baselines(examples, ctx.data.train, doms,
                                                        routes=False))
  return out
