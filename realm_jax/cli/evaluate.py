"""`realm-jax eval --workdir DIR`: evaluates a run's starting point and final params
and writes eval.json, eval.md and PNG plots into the workdir.

It writes nothing else there: the run's tokenizer and params are only read
(`train.prepare(create=False)`), and a run with no finished stage is refused
before any data is built or model loaded."""

from __future__ import annotations

import json
import os

import jax

from realm_jax.cli import plots, train
from realm_jax.train import sharding
from realm_jax.evaluation import baselines
from realm_jax.evaluation.accuracy import evaluate_params, results_table


def run(workdir: str, overrides: list[str] | None = None) -> dict:
  """Evaluates the run's starting point and final params; writes eval.json/eval.md/plots."""
  run_info = train.load_run_info(workdir)
  if not train.finished_phases(workdir):
    raise FileNotFoundError(f"{workdir} has no finished stage (params/{{{','.join(train.PHASES)}}}"
                            "): train it to the end of a stage first")
  cfg = train.load_config(workdir, overrides)
  mesh = train.make_mesh(cfg.mesh)
  with sharding.use_mesh(mesh):
    return _run(workdir, run_info, cfg, train.prepare(cfg, workdir, mesh, create=False))


def _run(workdir: str, run_info: dict, cfg, ctx) -> dict:
  results: dict[str, dict[str, dict[str, float]]] = {}
  stages = train.stage_params(ctx, workdir)
  if cfg.eval.final_only:
    stages = {k: v for k, v in stages.items() if k.startswith("final")}
  for stage, params in stages.items():
    results[stage] = {}
    for with_routes, name in ((False, "without routes"), (True, "with routes")):
      results[stage][name] = evaluate_params(
          params, ctx.model_cfg, ctx.tokenizer, ctx.data.eval[:cfg.eval.num_questions], cfg.eval,
          cfg.rl.mrpv, with_routes=with_routes, seed=cfg.seed, chat=ctx.chat)
  table = results_table(results, cfg.eval.k, _baselines(cfg, ctx))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump({"experiment": run_info.get("experiment"), "results": results}, f, indent=2)
    with open(os.path.join(workdir, "eval.md"), "w") as f:
      f.write(f"# {run_info.get('experiment')} ({workdir})\n\n{table}")
    plots.plot_training(workdir)
  print(table)
  return results


def _baselines(cfg, ctx) -> dict[str, dict[str, float]]:
  """Trivial baselines on the evaluated questions, the mode taken on the train questions; with
  routes, "copy a shown route" reads the routes `evaluate_params` shows."""
  examples, doms = ctx.data.eval[:cfg.eval.num_questions], baselines.source_domains(cfg.data.source)
  return {"without routes": baselines.trivial_baselines(examples, ctx.data.train, doms,
                                                        routes=False),
          "with routes": baselines.trivial_baselines(examples, ctx.data.train, doms, cfg.rl.mrpv,
                                                     cfg.seed)}
