"""Plain records shared by the data layer: a reasoning `Route` and an `Example`.

Conventions
- Records are frozen dataclasses; "changing" one means `dataclasses.replace`.
- `Example.answer` is the gold final answer as a string (a plain number for the
  built-in domains); `Example.cot` is the gold chain of thought *without* the
  final answer line, or None when the source has none.
- A `Route` is an external chain of thought for one question. `positive` is an
  outcome label: its final answer verifies against the gold answer. `error`
  names how a negative route went wrong when that is known (the domain teacher
  names the injected error; file and model teachers use "wrong_answer" or
  "no_answer").
- `to_dict` / `from_dict` round-trip through JSON; `meta` must itself hold only
  JSON values (tuples come back as lists).
"""

from __future__ import annotations

import dataclasses
from typing import Any

_ROUTE_FIELDS = ("text", "answer", "positive", "source", "error")
_EXAMPLE_FIELDS = ("id", "question", "answer", "cot", "domain", "routes", "meta")


def _check_keys(d: Any, kind: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> None:
  if not isinstance(d, dict):
    raise ValueError(f"{kind}.from_dict: expected a dict, got {type(d).__name__}")
  missing = [k for k in required if k not in d]
  if missing:
    raise ValueError(f"{kind}.from_dict: missing field(s) {missing}; got keys {sorted(d)}")
  unknown = [k for k in d if k not in allowed]
  if unknown:
    raise ValueError(f"{kind}.from_dict: unknown field(s) {unknown}; allowed: {list(allowed)}")


@dataclasses.dataclass(frozen=True)
class Route:
  """One external chain of thought with its outcome label."""

  text: str
  answer: str | None
  positive: bool
  source: str
  error: str | None = None

  def __post_init__(self) -> None:
    if not isinstance(self.text, str):
      raise TypeError(f"Route.text must be a str, got {type(self.text).__name__}")
    if self.answer is not None and not isinstance(self.answer, str):
      raise TypeError(f"Route.answer must be a str or None, got {type(self.answer).__name__}")
    if not isinstance(self.positive, bool):
      raise TypeError(f"Route.positive must be a bool, got {type(self.positive).__name__}")
    if self.positive and self.error is not None:
      raise ValueError(f"a positive Route cannot carry an error label (got error={self.error!r})")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Route:
    _check_keys(d, "Route", ("text", "answer", "positive", "source"), _ROUTE_FIELDS)
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class Example:
  """One question with its gold answer, optional gold CoT and route pool."""

  id: str
  question: str
  answer: str
  cot: str | None
  domain: str
  routes: tuple[Route, ...] = ()
  meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self) -> None:
    for name in ("id", "question", "answer", "domain"):
      value = getattr(self, name)
      if not isinstance(value, str):
        raise TypeError(
            f"Example.{name} must be a str, got {type(value).__name__} (id={self.id!r})"
        )
    if self.cot is not None and not isinstance(self.cot, str):
      raise TypeError(f"Example.cot must be a str or None (id={self.id!r})")
    routes = tuple(self.routes)
    for r in routes:
      if not isinstance(r, Route):
        raise TypeError(
            f"Example.routes must hold Route objects, got {type(r).__name__} (id={self.id!r})"
        )
    object.__setattr__(self, "routes", routes)
    if not isinstance(self.meta, dict):
      raise TypeError(
          f"Example.meta must be a dict, got {type(self.meta).__name__} (id={self.id!r})"
      )

  @property
  def positive_routes(self) -> tuple[Route, ...]:
    return tuple(r for r in self.routes if r.positive)

  @property
  def negative_routes(self) -> tuple[Route, ...]:
    return tuple(r for r in self.routes if not r.positive)

  def with_routes(self, routes: tuple[Route, ...] | list[Route]) -> Example:
    """A copy whose route pool is `self.routes` followed by `routes`."""
    return dataclasses.replace(self, routes=self.routes + tuple(routes))

  def to_dict(self) -> dict[str, Any]:
    return {
        "id": self.id,
        "question": self.question,
        "answer": self.answer,
        "cot": self.cot,
        "domain": self.domain,
        "routes": [r.to_dict() for r in self.routes],
        "meta": self.meta,
    }

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Example:
    _check_keys(d, "Example", ("id", "question", "answer", "cot", "domain"), _EXAMPLE_FIELDS)
    routes = d.get("routes", [])
    if not isinstance(routes, list):
      raise ValueError(f"Example.from_dict: 'routes' must be a list (id={d['id']!r})")
    return cls(
        id=d["id"],
        question=d["question"],
        answer=d["answer"],
        cot=d["cot"],
        domain=d["domain"],
        routes=tuple(Route.from_dict(r) for r in routes),
        meta=dict(d.get("meta", {})),
    )
