"""scripts/merge_seed_runs.py: seeds run apart and merged give the report of one multi-seed job."""

import importlib.util
import json
from pathlib import Path

import pytest

from core.pipeline.runner import run_job
from core.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def merge_main():
    spec = importlib.util.spec_from_file_location("merge_seed_runs", ROOT / "scripts" / "merge_seed_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def tiny(seeds, seed=None):
    return load_spec(
        {
            "seeds": seeds,
            **({} if seed is None else {"seed": seed}),
            "model": {"arch": "cnn_small_mnist"},
            "dataset": {"name": "mnist5k", "max_train_samples": 64, "max_test_samples": 40, "batch_size": 32},
            "objective": {"type": "natural"},
            "pruning": {"methods": ["lwm"], "k": [0.5]},
            "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": None, "finetune": {"epochs": 1, "lr": 0.01}},
            "evaluation": {
                "pgd_steps": 2,
                "val_pgd_steps": 1,
                "val_max_samples": 16,
                "autoattack": False,
                "measure_latency": False,
            },
            "export": {"formats": ["compressed"]},
        }
    )


def test_merged_seeds_equal_one_multi_seed_job(tmp_path):
    whole = run_job(tiny([0, 1]), tmp_path / "whole")
    run_job(tiny([0]), tmp_path / "s0")
    run_job(tiny([1]), tmp_path / "s1")
    assert merge_main()([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert merged["seeds"] == whole["seeds"] == [0, 1]
    assert merged["aggregate"] == json.loads(json.dumps(whole["aggregate"]))
    assert {v: r["metrics"] for v, r in merged["variants"].items()} == {
        v: r["metrics"] for v, r in whole["variants"].items()
    }


def test_a_single_seed_run_merges_as_its_seed(tmp_path):
    # the shipped demo spec says `seed: 0`; its run and a `seeds: [1]` run make a two-seed report
    whole = run_job(tiny([0, 1]), tmp_path / "whole")
    run_job(tiny(None, seed=0), tmp_path / "single")
    run_job(tiny([1]), tmp_path / "s1")
    assert merge_main()([str(tmp_path / "single"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "report.json").read_text())
    assert merged["seeds"] == [0, 1]
    assert set(merged["variants"]) == {"dense_s0", "lwm_k0.5_s0", "dense_s1", "lwm_k0.5_s1"}
    assert {v: r["metrics"] for v, r in merged["variants"].items()} == {
        v: r["metrics"] for v, r in whole["variants"].items()
    }
    assert merged["aggregate"] == json.loads(json.dumps(whole["aggregate"]))


def test_specs_that_differ_beyond_the_seeds_are_refused(tmp_path):
    run_job(tiny([0]), tmp_path / "s0")
    other = tiny([1]).model_copy(update={"name": "another"})
    run_job(other, tmp_path / "s1")
    with pytest.raises(SystemExit):
        merge_main()([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "merged")])
