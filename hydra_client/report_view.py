"""The part of a report (``GET /v1/jobs/{id}/report``, format ``hydra-compress-report/3``) this client
reads, as TypedDicts: a view of the server's Pydantic model ``core.pipeline.report_model.Report``.

Duplicated here on purpose rather than imported: the client installs without torch and without our
server packages (an import-linter contract), and generating code from ``/openapi.json`` would add a
build step and a generator dependency for the handful of fields the CLI prints. The view is kept
honest by ``tests/client/test_report_view.py``, which checks every key here against the server's model
(names and optionality), so a renamed field fails a test instead of printing dashes."""

from __future__ import annotations

from typing import TypedDict


class ComparisonRow(TypedDict):
    variant: str
    base: str
    method: str
    k: float
    seed: int | None
    sparsity: float
    metrics: dict[str, float]
    ci95: dict[str, list[float]]
    bytes: dict[str, int]


class Flag(TypedDict):
    variant: str
    check: str
    message: str


class ReportView(TypedDict):
    format: str
    headline_robust_metric: str
    comparison: list[ComparisonRow]
    procedures: dict[str, str]
    flags: list[Flag]


__all__ = ["ReportView", "ComparisonRow", "Flag"]
