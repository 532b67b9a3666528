"""Built-in vertical domains: each a rule book, a question generator and a solver.

`DOMAINS` maps a name to its `Domain` instance; `get_domain(name)` looks one up.
See `domains/base.py` for the shared shape (routes, named errors, verification).
"""

from __future__ import annotations

from realm_jax.data.domains.base import ERROR_TYPES, Chain, Domain, Rule
from realm_jax.data.domains.dosing import Dosing
from realm_jax.data.domains.tariff import Tariff
from realm_jax.data.domains.tax import Tax

DOMAINS: dict[str, Domain] = {d.name: d for d in (Tariff(), Dosing(), Tax())}


def get_domain(name: str) -> Domain:
  """The built-in domain called `name`; a ValueError lists the valid names otherwise."""
  if name not in DOMAINS:
    raise ValueError(f"unknown domain {name!r}; valid domains: {', '.join(sorted(DOMAINS))}")
  return DOMAINS[name]


__all__ = ["DOMAINS", "ERROR_TYPES", "Chain", "Domain", "Rule", "get_domain"]
