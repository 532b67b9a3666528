"""A user's own vertical domain, loaded from a file by `data.source=domain:FILE.py:Class`."""

import math
import os

import numpy as np
import pytest

from realm_jax.cli import train
from realm_jax.data import sources
from realm_jax.data.domains import DOMAINS, Domain, get_domain
from realm_jax.data.domains.tariff import Tariff
from realm_jax.errors import ConfigError
from realm_jax.train import metrics
from tests.test_train import MICRO  # the micro model and stages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "examples/my_domain.py:Parking"
DEMO_STAGES = ["sft.steps=2", "sft.batch_size=4", "rl.steps=2"]


@pytest.fixture
def in_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def test_example_domain_generates_solves_and_writes_negatives(in_root):
  domain = get_domain(SPEC)
  assert isinstance(domain, Domain) and domain.name == "parking"
  assert get_domain(os.path.join(ROOT, SPEC)) is domain  # one instance per file and class
  assert "[R4]" in domain.rule_book()
  for difficulty in (0, 1, 3):
    examples = domain.generate(5, 6, difficulty)
    again = domain.generate(5, 6, difficulty)
    assert [e.question for e in examples] == [e.question for e in again]
    assert [e.answer for e in examples] == [e.answer for e in again]
    assert len({e.question for e in domain.generate(6, 6, difficulty)} ^
               {e.question for e in examples}) > 0  # another seed, other questions
    for ex in examples:
      gold = domain.solve(ex)
      assert gold.positive and domain.verify(gold.answer, ex.answer)
      assert gold.text.endswith(f"Answer: {ex.answer}") and "[R1]" in gold.text
      assert isinstance(domain.shortcut_answer(ex), str)
      negatives = domain.negative_routes(ex, np.random.default_rng(0), 4)
      assert len(negatives) == 4
      for r in negatives:
        assert not r.positive and r.error in domain.errors
        assert not domain.verify(r.answer, ex.answer)
        assert r.text != gold.text
  loaded = sources.load_source(f"domain:{SPEC}", 3, 0, 1)
  assert [e.domain for e in loaded] == ["parking"] * 3


def test_importable_module_and_builtin_names_still_resolve():
  assert isinstance(get_domain("realm_jax.data.domains.tariff:Tariff"), Tariff)
  assert get_domain("tariff") is DOMAINS["tariff"]
  with pytest.raises(ValueError, match="valid domains: dosing, tariff, tax"):
    get_domain("parking")


def test_errors_name_the_file_and_what_is_missing(in_root, tmp_path):
  missing = str(tmp_path / "nowhere.py")
  with pytest.raises(ValueError, match="nowhere.py not found"):
    get_domain(f"{missing}:Parking")
  with pytest.raises(ValueError, match="examples/my_domain.py has no class 'Nope'"):
    get_domain("examples/my_domain.py:Nope")
  with pytest.raises(ValueError, match="examples/my_domain.py:Rule is not a Domain subclass"):
    get_domain("examples/my_domain.py:Rule")
  half = tmp_path / "half.py"
  half.write_text("from realm_jax.data.domains import Domain\n\nclass Half(Domain):\n"
                  "  name = 'half'\n")
  with pytest.raises(ValueError, match="half.py:Half does not implement chain, question"):
    get_domain(f"{half}:Half")
  with pytest.raises(ValueError, match="no_such_module"):
    get_domain("no_such_module:Parking")
  with pytest.raises(ConfigError, match="nowhere.py not found"):
    sources.load_source(f"domain:{missing}:Parking", 2, 0)


def test_demo_pipeline_trains_on_the_user_domain(in_root, tmp_path):
  wd = str(tmp_path / "mine")
  train.run("demo", wd, MICRO + DEMO_STAGES + [f"data.source=domain:{SPEC}"])
  assert os.path.exists(os.path.join(wd, "DONE"))
  assert train.load_config(wd).data.source == f"domain:{SPEC}"
  rl_rows = metrics.read_metrics(wd, "rl")
  assert [r["step"] for r in rl_rows] == [0, 1]
  assert all(math.isfinite(r["loss"]) for r in rl_rows)
  teacher = metrics.read_metrics(wd, "sft_teacher")
  assert teacher and teacher[0]["teacher_examples"] > 0
