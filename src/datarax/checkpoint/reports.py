"""What :func:`~datarax.checkpoint.inspect` and :func:`~datarax.checkpoint.verify` return:
a report per step and per item, and its JSON form (``docs/guides/cli.md``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from datarax.checkpoint.item_checks import Problem

SCHEMA_VERSION = 1
"""The version of :meth:`CheckpointReport.to_json`'s layout; it changes only when a field
changes meaning or goes away (new fields may be added)."""


@dataclasses.dataclass
class ItemReport:
    """One item of a step.

    Attributes:
        name: The item's name in the step (its directory's name).
        path: The item directory.
        datarax: Whether it is a datarax item (``process_<i>.jsonl`` documents).
        handler: The handler ``_CHECKPOINT_METADATA`` names for it, if any.
        kind: ``MetadataManager`` or ``Metadata`` for a datarax item.
        format_version: The datarax format version it was written in.
        process_count: How many processes saved it.
        processes: Per process, what :func:`~datarax.checkpoint.inspect` shows (empty
            from :func:`~datarax.checkpoint.verify`).
        problems: Everything wrong with it.
    """

    name: str
    path: str
    datarax: bool
    handler: str | None = None
    kind: str | None = None
    format_version: int | None = None
    process_count: int | None = None
    processes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong with the item."""
        return not self.problems


@dataclasses.dataclass
class StepReport:
    """One step directory.

    Attributes:
        step: The step number (``None`` for an item directory outside a step).
        path: The step directory.
        items: Its items, by name.
        problems: What is wrong with the step's own files (``_CHECKPOINT_METADATA``,
            ``commit_success.txt``, a listed item that is missing).
    """

    step: int | None
    path: str
    items: list[ItemReport] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    @property
    def restorable(self) -> bool:
        """Whether the step and all its items are free of problems."""
        return not self.problems and all(item.ok for item in self.items)

    def all_problems(self) -> list[Problem]:
        """The step's problems and its items'."""
        return [*self.problems, *(p for item in self.items for p in item.problems)]


@dataclasses.dataclass
class CheckpointReport:
    """What :func:`~datarax.checkpoint.inspect` or :func:`~datarax.checkpoint.verify` found.

    Attributes:
        command: ``inspect`` or ``verify``.
        path: The path given.
        layout: ``root``, ``step`` or ``item``: what the path is.
        steps: The steps looked at, oldest first.
        uncommitted: Names of temporary step directories (saves in flight or interrupted).
        latest_restorable_step: From :func:`~datarax.checkpoint.verify`: the newest step
            looked at whose items all verify (``None`` if none does, and from
            :func:`~datarax.checkpoint.inspect`).
    """

    command: str
    path: str
    layout: str
    steps: list[StepReport] = dataclasses.field(default_factory=list)
    uncommitted: list[str] = dataclasses.field(default_factory=list)
    latest_restorable_step: int | None = None

    @property
    def ok(self) -> bool:
        """Whether every step looked at is free of problems."""
        return all(step.restorable for step in self.steps)

    def problems(self) -> list[Problem]:
        """Every problem found, step by step."""
        return [p for step in self.steps for p in step.all_problems()]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready dicts (the layout ``docs/guides/cli.md`` documents)."""
        steps = []
        for step in self.steps:
            s = dataclasses.asdict(step)
            s["restorable"] = step.restorable
            for item, report in zip(s["items"], step.items, strict=True):
                item["ok"] = report.ok
            steps.append(s)
        out: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "command": self.command,
            "path": self.path,
            "layout": self.layout,
            "ok": self.ok,
            "steps": steps,
            "uncommitted": list(self.uncommitted),
        }
        if self.command == "verify":
            out["latest_restorable_step"] = self.latest_restorable_step
        return out
