"""The strategy contract: what a search returns, the rows of its history, and the events it reports.

Strategies never write files or touch the run's Optuna study: they report each finished stage
and each query to a ``SearchEvents`` object (the application's recorder writes them down) and
return a ``SearchResult``. Only their own training state goes to ``checkpoint``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

from xsearch.core.registry import Registry
from xsearch.search_spaces import Constraints, as_constraints  # noqa: F401  (re-exported)

STRATEGIES: Registry = Registry("strategy")


class _Row(Mapping):
    """A typed history row that still reads like the dict it replaces (``row["score"]``, ``dict(row)``)."""

    kind: ClassVar[str]

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The row for ``search.json``; ``kind`` says which type reads it back."""
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


@dataclass(eq=True)
class StageRecord(_Row):
    """One finished search stage: its classes, the candidates alive during it, and the network derived after it."""

    kind: ClassVar[str] = "stage"
    stage: int
    classes: list[str]
    num_classes: int
    alive_per_layer: dict[str, int]
    alive: dict[str, list[str]]
    pruned: dict[str, list[str]]
    seconds: float
    val_accuracy: float
    val_accuracy_all_classes: float
    derived_arch: dict[str, str]
    derived_flops: int
    probabilities: dict[str, dict[str, float]]

    @property
    def record_id(self) -> str:
        """The study trial's id: a resumed search reports the stage again, the recorder keeps one trial."""
        return f"stage{self.stage}"


@dataclass(eq=True)
class QueryRecord(_Row):
    """One query of a multi-trial search: the architecture, its score and the best score so far."""

    kind: ClassVar[str] = "query"
    query: int
    arch: dict[str, str]
    flops: int
    params: int
    score: float
    best_score: float
    proposals: int
    metrics: dict[str, Any]
    source: str = ""  # the strategy that queried (spos queries through its searcher)
    recipe: dict[str, Any] | None = None  # search.tune_recipe: the training recipe it was trained with

    @property
    def record_id(self) -> str:
        return f"{self.source}-q{self.query}"

    def to_dict(self) -> dict[str, Any]:
        """The row for ``search.json`` (``recipe`` only when the query had one)."""
        row = super().to_dict()
        if row["recipe"] is None:
            del row["recipe"]
        return row


ROW_TYPES: dict[str, type[_Row]] = {"stage": StageRecord, "query": QueryRecord}


def row_from_dict(row: dict[str, Any]) -> StageRecord | QueryRecord:
    """A ``search.json`` history row back as its type (rows written before ``kind`` existed: by their keys)."""
    row = dict(row)
    kind = row.pop("kind", "query" if "query" in row else "stage")
    return ROW_TYPES[kind](**row)  # type: ignore[return-value]


@dataclass
class SearchResult:
    """What a search hands back: the architecture, its FLOPs and metrics, and the history."""

    arch: dict[str, str]
    flops: int
    params: int
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[StageRecord | QueryRecord] = field(default_factory=list)
    search_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form written to ``search.json``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["history"] = [row.to_dict() for row in self.history]
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SearchResult:
        """The inverse of ``to_dict``: typed history rows again."""
        payload = dict(payload)
        payload["history"] = [row_from_dict(row) for row in payload.get("history", [])]
        return cls(**payload)


@dataclass(frozen=True)
class SharedStudy:
    """A study several worker processes search together (``study=NAME``): the study and this worker's id.

    ``study`` is an ``optuna.Study`` on a storage every worker reaches (PostgreSQL across machines);
    ``worker`` names this worker uniquely across machines and stays the same when its run resumes.
    The claim protocol that uses it is ``xsearch.core.study.SharedClaims``.
    """

    study: Any
    worker: str


class SearchEvents(Protocol):
    """Where a strategy reports its progress; the application's recorder implements it (run folder, study).

    Called by strategies: ``stage`` after each search stage, ``query`` after each multi-trial query
    (``seconds``: search time so far), ``saved_queries`` once when a multi-trial search starts, to
    replay the queries of an interrupted run instead of asking the evaluator again, and
    ``shared_study`` once when a multi-trial search starts: a ``SharedStudy`` when several workers
    share one search, else None (an events object without the method counts as None).
    """

    def stage(self, record: StageRecord) -> None: ...

    def query(self, record: QueryRecord, seconds: float) -> None: ...

    def saved_queries(self) -> tuple[list[dict[str, Any]], float]:
        """``([{"arch": ..., "metrics": ...}, ...], seconds spent)`` of the interrupted run, or ``([], 0.0)``."""
        ...

    def shared_study(self) -> SharedStudy | None:
        """The study this worker shares with others (``study=NAME``), or None: the search is this process's own."""
        ...


class NoEvents:
    """The events of a search nobody records (library use, benchmarks, tests)."""

    def stage(self, record: StageRecord) -> None:
        pass

    def query(self, record: QueryRecord, seconds: float) -> None:
        pass

    def saved_queries(self) -> tuple[list[dict[str, Any]], float]:
        return [], 0.0

    def shared_study(self) -> SharedStudy | None:
        return None


class Strategy(ABC):
    """How to search. ``search`` is called once per run; with ``checkpoint`` it saves there and resumes."""

    name = ""
    needs_data = True  # False: it only queries an evaluator (which says for itself whether it needs images)
    data_parallel = False  # True: runs under torchrun, its training splitting each batch across the processes
    inherited_scores = False  # True: its trials are valued with a supernet's weights, not by the evaluator's score

    @abstractmethod
    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               events: SearchEvents | None = None, checkpoint: Path | None = None) -> SearchResult:
        """Find the best architecture of ``space`` under ``constraints`` on ``data``; report progress to ``events``.

        ``checkpoint`` is the strategy's own training state (written with ``xsearch.core.checkpoint``).
        """
