"""`realm-jax` (also `python -m realm_jax`): parse flags, call one function.

  realm-jax train EXPERIMENT --workdir DIR [key.sub=value ...]
  realm-jax eval --workdir DIR
  realm-jax generate --model PATH --prompt TEXT [--chat] [--max-new-tokens N] [--temperature T]
  realm-jax bench [--model bench|smollm2] [--weights random|packaged] [--repeats N]
                  [--grpo-steps N] [--json]
  realm-jax bench --memory CONFIG --mesh D,F,T [--batch-prompts N] [--group-size G]
                  [--prompt-len T] [--new-tokens M] [--microbatches N] [--dtype D] [--no-remat]
  realm-jax gpu-check [--out FILE] [--quick]
  realm-jax export --workdir DIR --out HF_DIR [--phase P] [--peft]
  realm-jax data stats SOURCE [--tokenizer PATH] [--n N]
  realm-jax data routes SOURCE --out FILE [--n N] [--negatives K] [--route-file FILE]
                        [--max-route-chars N] [--teacher-model PATH]
  realm-jax plot-schedule [EXPERIMENT] --out FILE.png [key=value ...]
  realm-jax sweep SWEEPFILE [--parallel N] [--out DIR] [--dry-run]

Errors: bad input (a missing file, a bad config value, a malformed data line, a
model realm_jax cannot load) prints one line `realm-jax: error: <what, where,
what to do>` to stderr and exits 2 for usage and config errors, 1 for the others
(`realm_jax.errors`); REALM_JAX_DEBUG=1 shows the traceback. Bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from realm_jax import errors
from realm_jax.data.config import MAX_ROUTE_CHARS

OVERRIDES_HELP = """overrides:
  Dotted KEY=VALUE pairs after the flags change fields of the experiment's config
  (realm_jax/configs.py: ExperimentConfig and its sections model, data, base, sft,
  rft, rl, eval). Values are typed by the field: numbers, true/false, none, and
  comma-separated tuples. All overrides are applied before the config is checked,
  so their order does not matter. Examples:
  realm-jax train demo --workdir runs/demo rl.steps=20 rl.lr=1e-4
  realm-jax train realm_zero --workdir runs/rz rl.eaai.shape=cosine rl.mrpv.num_routes=2
  realm-jax train grpo --workdir runs/g data.source=gsm8k:train.jsonl mesh=-1,1,1
"""

EVAL_HELP = """Evaluates a finished run (its --workdir) at two points: its starting point (the
params of the stage before the last one, or init_from's params, or a pretrained
model as loaded when the run has one stage; skipped with eval.final_only=true) and
its final params. Each is measured on the first eval.num_questions held-out
questions, without routes and with routes (rl.mrpv.num_routes routes from each
question's pool in the prompt):
  greedy accuracy (temperature 0) with a Wilson 95% confidence interval,
  pass@k and maj@k over eval.k samples at eval.temperature,
  with routes also the accuracy of the model's route verdicts.
eval.routes=without|with keeps one setting; eval.sample_routes=without|with samples
pass@k and maj@k in that one only (sampling k completions is the costliest part).
Writes eval.json (all numbers), eval.md (the table) and PNG plots into the workdir.
Overrides (KEY=VALUE, e.g. eval.num_questions=64 eval.k=8) change the config it reads.
"""


def _train_description() -> str:
  from realm_jax import configs
  summaries = configs.experiment_summaries()
  width = max(map(len, summaries), default=0)
  lines = [f"  {name.ljust(width)}  {doc}" for name, doc in summaries.items()]
  return ("Runs (or resumes) every enabled stage of an experiment in --workdir.\n\n"
          "experiments (experiments/NAME.py, or the path of any .py file with get_config()):\n"
          + "\n".join(lines))


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="realm-jax", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)

  raw = argparse.RawDescriptionHelpFormatter
  t = sub.add_parser("train", help="run an experiment (experiments/NAME.py)",
                     description=_train_description(), epilog=OVERRIDES_HELP, formatter_class=raw)
  t.add_argument("experiment", help="experiment name (listed above) or a .py path")
  t.add_argument("--workdir", required=True, help="run directory (created; resumed if it exists)")
  t.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                 help="dotted config overrides, e.g. rl.steps=20 (see below)")

  x = sub.add_parser("export", help="write a run's params as a Hugging Face folder",
                     description="Writes --out as a Hugging Face model folder (config.json, "
                     "model.safetensors, tokenizer) from the run's final params, LoRA adapters "
                     "merged into the weights; --peft also writes the adapters as a PEFT folder "
                     "(--out/peft).")
  x.add_argument("--workdir", required=True, help="the run directory `realm-jax train` wrote")
  x.add_argument("--out", required=True, help="the folder to write")
  x.add_argument("--phase", default=None, help="a finished stage (default: the last one)")
  x.add_argument("--peft", action="store_true", help="also the LoRA adapters in PEFT's layout")

  e = sub.add_parser("eval", help="evaluate a run: starting point and final params",
                     description=EVAL_HELP, formatter_class=raw)
  e.add_argument("--workdir", required=True, help="the run directory `realm-jax train` wrote")
  e.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                 help="dotted config overrides, e.g. eval.k=8")

  g = sub.add_parser("generate", help="sample from a model")
  g.add_argument("--model", required=True, help="HF folder or .gguf file (or 'smollm2')")
  g.add_argument("--prompt", required=True)
  g.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
  g.add_argument("--max-new-tokens", type=int, default=64)
  g.add_argument("--temperature", type=float, default=0.0)
  g.add_argument("--seed", type=int, default=0)

  b = sub.add_parser("bench", help="throughput benchmark; --memory: compiled update memory")
  b.add_argument("args", nargs=argparse.REMAINDER)
  c = sub.add_parser("gpu-check", help="one accelerator check (sampler, MFU, GRPO, RL) -> JSON")
  c.add_argument("args", nargs=argparse.REMAINDER)

  d = sub.add_parser("data", help="data tools")
  dsub = d.add_subparsers(dest="data_command", required=True)
  ds = dsub.add_parser("stats", help="print a table of a source's statistics")
  ds.add_argument("source", help="domain:NAME | gym:TASK | gsm8k:FILE | routes:FILE")
  ds.add_argument("--tokenizer", default=None, help="tokenizer file/folder, .gguf or smollm2, for token lengths")
  ds.add_argument("--n", type=int, default=200)
  ds.add_argument("--seed", type=int, default=0)
  ds.add_argument("--difficulty", type=int, default=0)
  dr = dsub.add_parser("routes", help="write a route-pool file for a dataset")
  dr.add_argument("source")
  dr.add_argument("--out", required=True)
  dr.add_argument("--n", type=int, default=200)
  dr.add_argument("--seed", type=int, default=0)
  dr.add_argument("--difficulty", type=int, default=0)
  dr.add_argument("--negatives", type=int, default=3)
  dr.add_argument("--route-file", default=None, help="JSONL routes from any LLM (file teacher)")
  dr.add_argument("--max-route-chars", type=int, default=MAX_ROUTE_CHARS, metavar="N",
                  help="refuse (and count) --route-file routes longer than N characters "
                       "(default: %(default)s, as data.max_route_chars in training)")
  dr.add_argument("--teacher-model", default=None,
                  help="model teacher: HF folder, .gguf or 'smollm2', prompted with the rule book")
  dr.add_argument("--samples", type=int, default=2, help="model-teacher routes per question")
  dr.add_argument("--max-new-tokens", type=int, default=256)

  s = sub.add_parser("plot-schedule", help="PNG of an experiment's EAAI schedule")
  s.add_argument("experiment", nargs="?", default="realm_zero")
  s.add_argument("--out", required=True)
  s.add_argument("overrides", nargs="*")

  w = sub.add_parser("sweep", help="run a grid of experiments")
  w.add_argument("args", nargs=argparse.REMAINDER)
  return p


_FORMAT_WARNING = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None):
  if issubclass(category, errors.DataWarning):
    return f"realm-jax: warning: {message}\n"
  return _FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> None:
  """The entry point: user errors become one line and an exit code (module docstring)."""
  warnings.formatwarning = _format_warning
  try:
    _main(list(sys.argv[1:] if argv is None else argv))
  except Exception as e:  # SystemExit and KeyboardInterrupt pass through
    if errors.debug() or not errors.is_user_error(e):
      raise
    print(f"realm-jax: error: {errors.message(e)}", file=sys.stderr)
    sys.exit(errors.exit_code(e))


def _main(argv: list[str]) -> None:
  if argv and argv[0] in ("bench", "sweep", "gpu-check"):  # they parse their own flags
    if argv[0] == "bench":
      from realm_jax.cli import bench
      bench.main(argv[1:])
      return
    if argv[0] == "gpu-check":
      from realm_jax.cli import gpu_check
      gpu_check.main(argv[1:])
      return
    from realm_jax.cli import sweep
    sys.exit(sweep.main(argv[1:]))
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  # Dotted overrides may follow flags (`train X --workdir D a.b=1`): argparse leaves them over.
  bad = [e for e in extra if "=" not in e or e.startswith("-")]
  if bad or (extra and not hasattr(args, "overrides")):
    parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
  if extra:
    args.overrides = list(args.overrides) + extra
  if args.command in ("train", "eval", "generate", "data", "export"):  # they compile models
    from realm_jax.train import compile_cache
    compile_cache.enable()
  if args.command == "train":
    from realm_jax.cli import train
    train.run(args.experiment, args.workdir, args.overrides)
  elif args.command == "eval":
    from realm_jax.cli import evaluate
    evaluate.run(args.workdir, args.overrides)
  elif args.command == "export":
    from realm_jax.cli import export
    done = export.run(args.workdir, args.out, args.phase, args.peft)
    print(f"wrote {done['model']} ({done['phase']} params; {done['tokenizer']})"
          + (f" and {done['peft']}" if done["peft"] else ""))
  elif args.command == "generate":
    from realm_jax.cli import generate as inference
    print(inference.generate_text(args.model, args.prompt, chat=args.chat,
                                  max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, seed=args.seed))
  elif args.command == "bench":
    from realm_jax.cli import bench
    bench.main(args.args)
  elif args.command == "data":
    from realm_jax.cli import datastats
    if args.data_command == "stats":
      datastats.print_stats(args.source, tokenizer=args.tokenizer, n=args.n, seed=args.seed,
                            difficulty=args.difficulty)
    else:
      datastats.write_routes(args.source, args.out, n=args.n, seed=args.seed,
                             difficulty=args.difficulty, negatives=args.negatives,
                             route_file=args.route_file, teacher_model=args.teacher_model,
                             samples=args.samples, max_new_tokens=args.max_new_tokens,
                             max_route_chars=args.max_route_chars)
  elif args.command == "plot-schedule":
    from realm_jax import configs
    from realm_jax.cli import plots
    cfg = configs.load_experiment(args.experiment, args.overrides)
    plots.plot_schedule(cfg.eaai_config(), args.out)
    print(f"wrote {args.out}")
  elif args.command == "sweep":
    from realm_jax.cli import sweep
    sys.exit(sweep.main(args.args))


if __name__ == "__main__":
  main(sys.argv[1:])
