"""Configs: overrides are applied together (order never matters), ranges are checked."""

import dataclasses
import importlib
import itertools
import pathlib
import random
import sys

import pytest

from realm_jax import configs
from realm_jax.errors import ConfigError

# Each key with values that are valid alone or only in some combinations (microbatches must
# divide batch_prompts * group_size / num_minibatches; num_routes <= 1 + negatives).
CHOICES = {
    "rl.batch_prompts": [2, 3, 6, 8],
    "rl.microbatches": [1, 2, 3, 4],
    "rl.num_minibatches": [1, 2],
    "rl.mrpv.num_routes": [2, 3, 4, 5],
    "data.negatives_per_question": [1, 3, 4],
    "rl.steps": [0, 7],
    "rl.eaai.shape": ["linear", "cosine"],
    "mesh": ["-1,1,1", "2,2,2"],
    "sft.batch_size": [8, 12],
    "sft.microbatches": [1, 3, 4],
}


def _direct(base: configs.ExperimentConfig, chosen: dict[str, str]) -> configs.ExperimentConfig:
  """The same config built by hand, every section at once (no override machinery)."""
  v = {k: (tuple(int(x) for x in s.split(",")) if k == "mesh" else
           s if k == "rl.eaai.shape" else int(s)) for k, s in chosen.items()}
  get = lambda key, obj, name: v.get(key, getattr(obj, name))  # noqa: E731
  mrpv = dataclasses.replace(base.rl.mrpv, num_routes=get("rl.mrpv.num_routes", base.rl.mrpv,
                                                          "num_routes"))
  eaai = dataclasses.replace(base.rl.eaai, shape=get("rl.eaai.shape", base.rl.eaai, "shape"))
  rl = dataclasses.replace(base.rl, mrpv=mrpv, eaai=eaai, **{
      f: get(f"rl.{f}", base.rl, f) for f in ("batch_prompts", "microbatches", "num_minibatches",
                                              "steps")})
  data = dataclasses.replace(base.data, negatives_per_question=get(
      "data.negatives_per_question", base.data, "negatives_per_question"))
  sft = dataclasses.replace(base.sft, **{f: get(f"sft.{f}", base.sft, f)
                                         for f in ("batch_size", "microbatches")})
  return dataclasses.replace(base, rl=rl, data=data, sft=sft, mesh=get("mesh", base, "mesh"))


def _outcome(fn, error_type=ValueError):
  try:
    return fn()
  except error_type:
    return "invalid"


def test_random_override_sets_give_the_same_config_in_every_order():
  base = configs.load_experiment("demo")
  rng = random.Random(0)
  n_valid = 0
  for _ in range(60):
    keys = rng.sample(sorted(CHOICES), rng.randint(2, 6))
    chosen = {k: str(rng.choice(CHOICES[k])) for k in keys}
    expected = _outcome(lambda: _direct(base, chosen))
    n_valid += not isinstance(expected, str)
    items = [f"{k}={v}" for k, v in chosen.items()]
    for _ in range(4):
      rng.shuffle(items)
      got = _outcome(lambda: configs.apply_overrides(base, items), ConfigError)
      assert got == expected, items
  assert 20 <= n_valid <= 50  # the sample holds both valid and invalid sets


def test_order_dependent_pairs_from_the_probe_now_pass_both_ways():
  for pair in (["rl.mrpv.num_routes=5", "data.negatives_per_question=4"],
               ["rl.microbatches=3", "rl.batch_prompts=6"]):
    a = configs.load_experiment("demo", pair)
    b = configs.load_experiment("demo", pair[::-1])
    assert a == b
  assert a.rl.microbatches == 3 and a.rl.batch_prompts == 6


def test_every_permutation_of_three_agrees():
  items = ["rl.batch_prompts=3", "rl.microbatches=3", "rl.group_size=2"]  # 3*2 = 6, 6 % 3 == 0
  results = [configs.apply_overrides(configs.ExperimentConfig(), list(p))
             for p in itertools.permutations(items)]
  assert len(results) == 6 and all(r == results[0] for r in results)
  cfg = results[0]
  assert (cfg.rl.batch_prompts, cfg.rl.microbatches, cfg.rl.group_size) == (3, 3, 2)


def test_a_key_given_twice_keeps_the_last_value():
  cfg = configs.apply_overrides(configs.ExperimentConfig(), ["rl.steps=3", "rl.steps=9"])
  assert cfg.rl.steps == 9


@pytest.mark.parametrize("override, match", [
    ("rl.steps=-1", r"rl.steps=-1 must be >= 0"),
    ("rl.lr=-0.001", r"rl.lr=-0.001 must be > 0"),
    ("rl.lr=0", r"rl.lr=0.0 must be > 0"),
    ("rl.temperature=-1", r"rl.temperature=-1.0 must be >= 0"),
    ("rl.batch_prompts=0", r"rl.batch_prompts=0 must be > 0"),
    ("rl.max_new_tokens=0", r"rl.max_new_tokens=0 must be > 0"),
    ("rl.grad_clip=0", r"rl.grad_clip=0.0 must be > 0"),
    ("sft.lr=-1", r"sft.lr=-1.0 must be > 0"),
    ("sft.steps=-2", r"sft.steps=-2 must be >= 0"),
    ("sft.kd_alpha=1.5", r"sft.kd_alpha must be in \[0, 1\]"),
    ("base.batch_size=0", r"sft.batch_size=0 must be > 0"),
    ("rft.lr=0", r"rft.lr=0.0 must be > 0"),
    ("rft.samples_per_question=0", r"rft.samples_per_question=0 must be > 0"),
    ("rft.temperature=-0.5", r"rft.temperature=-0.5 must be >= 0"),
    ("eval.k=0", r"eval.k=0 must be > 0"),
    ("eval.temperature=-1", r"eval.temperature=-1.0 must be >= 0"),
    ("eval.batch_size=0", r"eval.batch_size=0 must be > 0"),
    ("data.num_train=0", r"data.num_train=0"),
    ("data.negatives_per_question=-1", r"data.negatives_per_question=-1 must be >= 0"),
    ("data.max_route_chars=0", r"data.max_route_chars=0 must be > 0"),
    ("data.prompt_buckets=0,128", r"data.prompt_buckets must be positive"),
    ("data.sft_buckets=256,128", r"data.sft_buckets must be positive token counts, increasing"),
    ("model.dtype=int8", r"model.dtype='int8'; use "),
    ("model.tokenizer_vocab=0", r"model.tokenizer_vocab=0 must be > 0"),
    ("keep_checkpoints=0", r"keep_checkpoints=0: must be >= 1"),
    ("checkpoint_every=-1", r"checkpoint_every=-1: must be >= 0"),
    ("log_every=2", r"unknown field 'log_every'"),  # removed: it never did anything
    ("max_memory_fraction=1.5", r"max_memory_fraction=1.5: must be in \(0, 1\]"),
    ("mesh=1,2", r"mesh=1,2: give three sizes"),
    ("mesh=1,2,3,4", r"mesh=1,2,3,4: give three sizes"),
    ("mesh=0,1,1", r"mesh=0,1,1"),
    ("mesh=-1,-1,1", r"mesh=-1,-1,1"),
    ("rl.eaai.start=1.5", r"EAAIConfig.start must be in \[0, 1\]"),
    ("rl.mrpv.all_same_share=-0.1", r"all_same_share must be in \[0, 1\]"),
    ("sft.route_share=2", r"sft.route_share must be in \[0, 1\]"),
])
def test_out_of_range_values_are_config_errors(override, match):
  with pytest.raises(ConfigError, match=match):
    configs.load_experiment("demo", [override])


def test_boundary_values_are_accepted():
  cfg = configs.load_experiment("demo", [
      "rl.steps=0", "rl.temperature=0", "checkpoint_every=0", "keep_checkpoints=1", "mesh=1,1,1",
      "sft.route_share=1", "rl.eaai.start=1", "rl.eaai.end=0", "data.negatives_per_question=0",
      "rl.mrpv.num_routes=1", "rl.mrpv.min_negative=0", "eval.temperature=0"])
  assert cfg.mesh == (1, 1, 1) and cfg.rl.steps == 0 and cfg.checkpoint_every == 0


@pytest.mark.parametrize("items, match", [
    (["rl.steps.x=3"], r"override rl.steps.x: rl.steps is a value, not a config section"),
    (["rl.steps=3", "rl.steps.x=3"], r"rl.steps is set to a value by override rl.steps"),
    (["rl.eaai.shape=cosine", "rl.eaai=linear"], r"rl.eaai is a config section"),
    (["rl.nope.x=1"], r"unknown field 'nope' of RLConfig; valid: steps"),
    (["rl.steps"], r"must look like key.sub=value"),
    (["rl.negatives=maybe"], r"expected a boolean"),
])
def test_malformed_overrides_say_what_is_wrong(items, match):
  with pytest.raises(ConfigError, match=match):
    configs.apply_overrides(configs.ExperimentConfig(), items)


def test_experiment_summaries_are_the_docstrings_first_lines():
  summaries = configs.experiment_summaries()
  assert set(summaries) == set(configs.experiment_names()) and "demo" in summaries
  for name, line in summaries.items():
    doc = importlib.import_module(f"experiments.{name}").__doc__
    assert line == doc.strip().splitlines()[0], name


def test_summaries_do_not_import_the_experiments(tmp_path, monkeypatch):
  """A broken experiment still gets its help line (read with ast, never executed)."""
  folder = pathlib.Path(tmp_path) / "experiments"
  folder.mkdir()
  (folder / "__init__.py").write_text("")
  (folder / "boom.py").write_text('"""Explodes on import."""\nraise SystemExit(3)\n\n\n'
                                  'def get_config():\n  return None\n')
  (folder / "helper.py").write_text('"""A script beside the experiments, not one."""\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "experiments", raising=False)
  assert configs.experiment_summaries() == {"boom": "Explodes on import."}


def test_mapping_fields_take_entries_in_any_order():
  items = ["rl.reward_weights.answer=0.5", "rl.reward_weights.format=0.25", "rl.steps=3"]
  a = configs.apply_overrides(configs.ExperimentConfig(), items)
  b = configs.apply_overrides(configs.ExperimentConfig(), items[::-1])
  assert a == b and a.rl.reward_weights == {"answer": 0.5, "format": 0.25}
