"""The typed report (core/pipeline/report_model.py, built in core/pipeline/report_build.py): a stored
/2 report loads as /3 with the same numbers, every check fires on what it names, and nothing untyped
is written."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.pipeline.report import render_markdown
from core.pipeline.report_build import CHANCE_MARGIN, build_variant, load_report
from core.pipeline.report_model import REPORT_FORMAT, Report

DATA = Path(__file__).resolve().parents[2] / "data" / "reports"


def _stored(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["v2_global_latency", "v2_two_seeds"])
def test_a_v2_report_loads_as_v3_with_the_same_numbers(name: str) -> None:
    old = _stored(name)
    new = load_report(old)
    assert old["format"] == "hydra-compress-report/2" and new.format == REPORT_FORMAT
    for variant, result in old["variants"].items():
        assert new.variants[variant].metrics == result["metrics"]
        assert [list(c) for c in new.variants[variant].intervals.values()] == list(result["intervals"].values())
    for row_old, row_new in zip(old["comparison"], new.comparison, strict=True):
        assert row_new.variant == row_old["variant"] and row_new.sparsity == row_old["sparsity"]
        assert row_new.metrics["benign_acc"] == row_old["benign_acc"]
        assert row_new.bytes["compressed"] == row_old["compressed_bytes"]
    assert new.headline_robust_metric == old["headline_robust_metric"]
    assert set(new.artifacts) == set(old["artifacts"])
    again = load_report(json.loads(new.model_dump_json()))  # /3 round trip
    assert again == new


def test_the_migrated_report_keeps_latency_and_seed_summaries() -> None:
    single = load_report(_stored("v2_global_latency"))
    latency = single.variants["hydra_k0.1"].inference.latency["torch_cpu_b1"]  # type: ignore[union-attr]
    assert latency.verdict == "not measurable at this size" and not latency.measurable
    assert latency.speedup_ci95 is not None and latency.speedup_ci95[0] < 1 < latency.speedup_ci95[1]
    assert single.variants["hydra_k0.1"].allocation.allocation == "global"  # type: ignore[union-attr]
    seeds = load_report(_stored("v2_two_seeds"))
    dense = next(a for a in seeds.aggregate or [] if a.variant == "dense")
    assert dense.seeds == [1, 2] and dense.metrics["benign_acc"].per_seed == {"1": 0.09375, "2": 0.09375}
    md = render_markdown(seeds)
    assert "Mean ± standard deviation over seeds [1, 2]" in md and "9.4 ± 0.0" in md


def test_an_unknown_format_or_an_untyped_field_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        load_report({"format": "hydra-compress-report/1"})
    data = json.loads(load_report(_stored("v2_global_latency")).model_dump_json())
    data["variants"]["dense"]["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        Report.model_validate(data)


def _raw(**patch):
    raw = {"method": "dense", "k": 1.0, "n_test": 100, "metrics": {"benign_acc": 0.9, "pgd_acc": 0.5}}
    return {**raw, **patch}


def test_a_network_at_chance_is_flagged() -> None:
    at_chance = build_variant(_raw(metrics={"benign_acc": 0.1 + CHANCE_MARGIN}), num_classes=10)
    assert at_chance.checks["chance_accuracy"].flagged
    assert "at chance (10.0% for 10 classes)" in at_chance.checks["chance_accuracy"].message
    learned = build_variant(_raw(metrics={"benign_acc": 0.1 + CHANCE_MARGIN + 0.01}), num_classes=10)
    assert not learned.checks["chance_accuracy"].flagged


def test_a_robust_accuracy_above_benign_is_flagged_but_not_a_smoothed_certificate() -> None:
    broken = build_variant(_raw(metrics={"benign_acc": 0.5, "pgd_acc": 0.6}), 10)
    assert (
        broken.checks["robust_above_benign"].flagged and "pgd_acc 60.0%" in broken.checks["robust_above_benign"].message
    )
    smoothed = build_variant(_raw(metrics={"benign_acc": 0.5, "certified_acc@0": 0.6}), 10)
    assert not smoothed.checks["robust_above_benign"].flagged


def test_a_diverged_training_loss_is_flagged() -> None:
    fine = build_variant(_raw(training_loss={"pretrain": [2.3, 1.1, 0.7]}), 10)
    assert not fine.checks["training_diverged"].flagged
    blown = build_variant(_raw(training_loss={"pretrain": [2.3], "finetune": [0.5, 5.01]}), 10)
    check = blown.checks["training_diverged"]
    assert check.flagged and check.details == {"finetune": {"epoch": 2, "loss": 5.01, "first": 0.5}}
    nan = build_variant(_raw(training_loss={"prune": [1.0, math.nan]}), 10)
    assert nan.checks["training_diverged"].flagged


def test_what_an_attack_library_says_becomes_a_flagged_check() -> None:
    from core.pipeline.evaluate import _captured

    with _captured() as said:
        print("there are 27 points with zero gradient!")
        logging.getLogger("auto-attack").warning("there are 3 points with zero gradient!")
        warnings.warn("slow path", stacklevel=1)
    assert said.lines == [
        "there are 27 points with zero gradient!",
        "slow path",
        "there are 3 points with zero gradient!",
    ]
    result = build_variant(_raw(attack_output={"apgd_t": said.lines, "pgd": []}), 10)
    check = result.checks["attack_warnings"]
    assert check.flagged and check.message.startswith("apgd_t: there are 27 points") and "pgd" not in check.details


def test_fields_other_engineers_add_have_a_place() -> None:
    result = build_variant(_raw(precision="bf16", onnx_opset=17), 10)
    assert result.precision == "bf16" and result.extras == {"onnx_opset": 17}
