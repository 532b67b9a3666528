"""Package layout: imports point one way, and modules stay readable alone.

Layers, lowest first: model <- data <- train <- rl <- evaluation <- cli. A module
may import its own layer and the layers below it, never above. `realm_jax.configs`
composes the concept configs (it may import any layer) and only the CLI imports it;
nothing below cli imports realm_jax.cli. `realm_jax.errors` (the error types every
layer raises) imports nothing of realm_jax. Every import counts, in-function ones
too. No module exceeds 400 lines.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "realm_jax")
LAYERS = ("model", "data", "train", "rl", "evaluation", "cli")
MAX_LINES = 400


def _modules() -> dict[str, str]:
  """{dotted module name: path} of every .py file under realm_jax/."""
  out = {}
  for d, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel.removesuffix(".__init__")] = path
  return out


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
  """The realm_jax modules (or packages) `name` imports, `from X import Y` resolved to X.Y
  when X.Y is a module of the package."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.split(".")[0] == "realm_jax")
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      if base.split(".")[0] != "realm_jax":
        continue
      for a in node.names:
        out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
  return out


def _layer(module: str) -> str:
  """'model' ... 'cli' for a module of a layer; the module itself for a top-level one."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and parts[1] in LAYERS else module


def test_the_layout_parses_every_layer():
  layers = {_layer(m) for m in MODULES}
  assert set(LAYERS) <= layers, layers
  assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
  own = _layer(module)
  bad = []
  for target in sorted(_imports(module, MODULES[module])):
    dest = _layer(target)
    if target == "realm_jax" or dest == "realm_jax.errors":
      ok = own != "realm_jax.errors"  # errors is a leaf
    elif dest == "realm_jax.configs":
      ok = own in ("cli", "realm_jax.__main__")
    elif own == "realm_jax.configs":
      ok = dest in LAYERS and dest != "cli"
    elif own in LAYERS and dest in LAYERS:
      ok = LAYERS.index(dest) <= LAYERS.index(own)
    else:  # realm_jax/__init__.py, __main__.py
      ok = own in ("realm_jax", "realm_jax.__main__")
    if not ok:
      bad.append(target)
  assert not bad, f"{module} ({own}) imports {bad} against model <- data <- train <- rl <- " \
                  "evaluation <- cli"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_at_most_400_lines(module):
  with open(MODULES[module]) as f:
    n = sum(1 for _ in f)
  assert n <= MAX_LINES, f"{MODULES[module]}: {n} lines; split it by concept"


def test_the_import_resolution_by_hand():
  """The resolver on known imports of known modules."""
  assert "realm_jax.train.loop" in _imports("realm_jax.train.sft", MODULES["realm_jax.train.sft"])
  assert "realm_jax.rl.stage" in _imports("realm_jax.cli.train", MODULES["realm_jax.cli.train"])
  assert _layer("realm_jax.rl.stage") == "rl" and _layer("realm_jax.configs") == "realm_jax.configs"
