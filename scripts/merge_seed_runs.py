"""Combine run folders of one spec that differ only in their seeds into one multi-seed report.

A multi-seed job (``seeds: [0, 1, 2]``) runs its seeds one after the other. To spread them over
machines, run the same spec with ``seeds: [0]``, ``seeds: [1]``, ... (or let one folder hold several)
and merge the folders here; the report is written by the same code as a job's (mean ± std over the
seeds, each seed's numbers, 95% intervals)::

    python scripts/merge_seed_runs.py runs/s0 runs/s1 runs/s2 --out runs/merged

A folder contributes its finished report (``report.json``) or, for a run still going, the networks its
checkpoint has finished evaluating. The specs must agree on everything but the seeds. A single-seed
run (``seed: N`` and no ``seeds``, such as the shipped demo spec) counts as seed N: it trains exactly
what ``seeds: [N]`` trains (tests/scripts/test_merge_seed_runs.py checks the merge against one job).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from core.callbacks import RunCallbacks
from core.io.checkpoint import load_checkpoint
from core.pipeline.plan import differing_fields
from core.pipeline.report import write_reports
from core.pipeline.report_build import load_report
from core.spec import JobSpec
from core.vocab import CHECKPOINT_NAME, REPORT_JSON, SPEC_NAME


def read_run(folder: Path) -> tuple[JobSpec, dict[str, Any], dict[str, Any] | None, str | None]:
    """(spec, evaluated variants, dataset info or None, device or None) of one run folder."""
    report_path = folder / REPORT_JSON
    if report_path.exists():
        report = load_report(json.loads(report_path.read_text()))  # any known format
        variants = {name: r.model_dump(mode="json") for name, r in report.variants.items()}
        return JobSpec.model_validate(report.spec), variants, report.dataset.model_dump(), report.device
    state = load_checkpoint(folder / CHECKPOINT_NAME)  # weights_only: the run's own format
    return JobSpec.model_validate_json(state["spec"]), json.loads(state["results"]), None, None


def as_seed(variants: dict[str, Any], seed: int) -> dict[str, Any]:
    """A single-seed run's networks under the names a multi-seed job gives them (``dense_s<seed>``,
    ``hydra_k0.01_s<seed>``: ``core.vocab.dense_name`` / ``variant_name`` with the seed)."""
    return {f"{name}_s{seed}": {**result, "seed": seed} for name, result in variants.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (report.json or checkpoint.pt)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged report")
    args = parser.parse_args(argv)
    spec: JobSpec | None = None
    results: dict[str, Any] = {}
    info: dict[str, Any] | None = None
    device: str | None = None
    for folder in args.runs:
        run_spec, variants, run_info, run_device = read_run(folder)
        if spec is None:
            spec = run_spec
        else:
            mine = {**spec.model_dump(mode="json"), "seeds": None, "seed": 0}
            theirs = {**run_spec.model_dump(mode="json"), "seeds": None, "seed": 0}
            differing = differing_fields(mine, theirs)
            if differing:
                parser.error(f"{folder}: the spec differs in {', '.join(differing)}")
        if run_spec.seeds is None:  # a single-seed run (`seed: N`, e.g. the shipped demo spec): seed N
            variants = as_seed(variants, run_spec.seed)
        clash = set(results) & set(variants)
        if clash:
            parser.error(f"{folder}: networks already merged from another folder: {', '.join(sorted(clash))}")
        results.update(variants)
        info = info or run_info
        device = device or run_device
    assert spec is not None
    if info is None:  # no folder finished: the dataset's description from the spec
        from core.data.datasets import build_datasets

        info = build_datasets(spec.dataset, spec.seed)[2]
    seeds = sorted({int(v["seed"]) for v in results.values()})
    merged = spec.model_copy(update={"seeds": seeds})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SPEC_NAME).write_text(json.dumps(merged.model_dump(mode="json"), indent=2))
    write_reports(args.out, merged, info, results, device or "unknown", RunCallbacks())
    print(f"merged {len(results)} networks of seeds {seeds} into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
