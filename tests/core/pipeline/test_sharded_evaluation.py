"""The final evaluation sharded over data-parallel ranks (CPU, gloo) gives the one-process numbers.

Every scenario of ``tests/evaluation_golden.py`` (our PGD with random starts and restarts, the smooth-ReLU
PGD, every AutoAttack component for 2, 3 and 4 classes, l_inf and l_2, CERTIFY's noise, IBP/CROWN-IBP) is
evaluated by 2 ranks, each on its block of every sample, and must equal the pinned one-process result bit
for bit, per-example vectors included (every flag vector tallied, every certificate's per-example
results). Also: samples that do not split evenly (7 examples in batches of 2 on 2 and 3 ranks, a rank
with nothing to attack), and a stop during a sharded evaluation of a job, which stops every rank."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as tmp

from core.callbacks import RunCallbacks
from core.errors import RunCanceled
from core.pipeline import evaluate as evaluate_mod
from core.pipeline.evaluate import Shard, evaluate_variant
from core.pipeline.resources import GradSync
from core.pipeline.runner import run_job
from core.spec import load_spec
from core.vocab import STAGE_STARTED
from tests.evaluation_golden import BASE, SCENARIOS, tiny_network, tiny_test_set

GOLDEN = json.loads((Path(__file__).resolve().parents[2] / "data" / "evaluation_golden.json").read_text())


def _evaluate(name: str, overrides: dict[str, Any], shard: Shard | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The scenario's result and its per-example vectors: every tallied flag vector and the
    certificate's per-example results."""
    num_classes, objective, evaluation = SCENARIOS[name]
    overrides = dict(overrides)
    dataset = {**BASE["dataset"], **overrides.pop("dataset", {})}
    data = {**BASE, "objective": objective, "dataset": dataset}
    data["evaluation"] = {"measure_latency": False, **evaluation, **overrides}
    spec = load_spec(data)
    model = tiny_network(num_classes)
    ds = tiny_test_set(model, num_classes)
    vectors: dict[str, Any] = {}
    add_flags = evaluate_mod._Tally.add_flags

    def recording(self: Any, key: str, flags: torch.Tensor, procedure: str) -> None:
        vectors[key] = flags.int().tolist()
        add_flags(self, key, flags, procedure)

    objective_cls = type(evaluate_mod.build_objective(spec.objective))
    summarize = objective_cls.summarize_certificate

    def recording_summary(self: Any, examples: dict[str, torch.Tensor], *args: Any) -> dict[str, Any]:
        vectors.update({f"cert:{k}": v.tolist() for k, v in examples.items()})
        return summarize(self, examples, *args)

    evaluate_mod._Tally.add_flags = recording  # type: ignore[method-assign]
    objective_cls.summarize_certificate = recording_summary  # type: ignore[method-assign]
    try:
        result = evaluate_variant(model, ds, spec, torch.device("cpu"), num_classes, shard=shard)
    finally:
        evaluate_mod._Tally.add_flags = add_flags  # type: ignore[method-assign]
        objective_cls.summarize_certificate = summarize  # type: ignore[method-assign]
    return json.loads(json.dumps(result, default=str)), vectors


def _rank(rank: int, size: int, store: str, jobs: list[tuple[str, dict[str, Any]]], results: Any) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", store=dist.FileStore(store, size), rank=rank, world_size=size, timeout=datetime.timedelta(minutes=5)
    )
    try:
        shard = Shard(rank, size, GradSync(size).gather_objects)
        out = [_evaluate(name, dict(overrides), shard) for name, overrides in jobs]
        results.put((rank, out))
    finally:
        dist.destroy_process_group()


def sharded(size: int, jobs: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Each rank's (result, vectors) of every job, in rank order."""
    ctx = tmp.get_context("spawn")
    results = ctx.Queue()
    store = os.path.join(tempfile.mkdtemp(prefix="hydra-eval-"), "store")
    procs = tmp.start_processes(_rank, args=(size, store, jobs, results), nprocs=size, join=False, start_method="spawn")
    got = dict(results.get(timeout=600) for _ in range(size))
    procs.join()
    return [got[r] for r in range(size)]


@pytest.fixture(scope="module")
def two_ranks_golden():
    return sharded(2, [(name, {}) for name in sorted(SCENARIOS)])


@pytest.mark.parametrize("index", range(len(SCENARIOS)))
def test_two_ranks_give_the_golden_results_and_per_example_vectors(two_ranks_golden, index):
    name = sorted(SCENARIOS)[index]
    one_result, one_vectors = _evaluate(name, {}, None)
    assert one_result == GOLDEN[name]  # the one-process path is the pinned one
    for rank_result, rank_vectors in (two_ranks_golden[0][index], two_ranks_golden[1][index]):
        assert rank_result == GOLDEN[name]  # every rank tallies the same gathered vectors
        assert rank_vectors == one_vectors
    assert "robust_acc" in one_vectors or "cert:radius" in one_vectors or "cert:correct" in one_vectors


UNEVEN = [
    # 7 examples in batches of 2: 4 batches, the last one short; AutoAttack attacks only the
    # clean-correct ones (a shorter list, split by its own batches)
    (
        "pgd_linf_4_classes_full_suite",
        {"max_samples": 7, "autoattack_max_samples": 7, "dataset": {"test_batch_size": 2}},
    ),
    ("pgd_only", {"max_samples": 7, "dataset": {"test_batch_size": 2}}),
    ("smoothing_certificate", {"certify_max_samples": 7}),
    (
        "crown_ibp_certificate_and_attacks",
        {
            "max_samples": 7,
            "autoattack_max_samples": 5,
            "certify_max_samples": 7,
            "bound_batch_size": 2,
            "dataset": {"test_batch_size": 2},
        },
    ),
]


@pytest.mark.parametrize("size", [2, 3])
def test_a_sample_that_does_not_split_evenly(size):
    ranks = sharded(size, UNEVEN)
    for index, (name, overrides) in enumerate(UNEVEN):
        one = _evaluate(name, json.loads(json.dumps(overrides)), None)
        certified = one[1].get("cert:prediction", one[1].get("cert:correct"))
        assert 7 in (one[0]["n_test"], len(certified or []))
        for rank in ranks:
            assert rank[index] == one, (name, size)


class StopInEvaluation(RunCallbacks):
    """Asks to stop as soon as the final evaluation starts."""

    def __init__(self) -> None:
        self.evaluating = False

    def on_event(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == STAGE_STARTED and payload.get("stage") == "evaluate":
            self.evaluating = True

    def should_cancel(self) -> bool:
        return self.evaluating


def test_a_stop_during_the_sharded_evaluation_stops_every_rank(tmp_path):
    spec = load_spec(
        {
            "seed": 1,
            "device": "cpu",
            "model": {"arch": "cnn_small_mnist"},
            "dataset": {"name": "mnist5k", "max_train_samples": 64, "max_test_samples": 64, "batch_size": 32},
            "objective": {"type": "natural"},
            "pruning": {"methods": ["hydra"], "k": [0.1]},
            "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": None, "finetune": None},
            # a long evaluation: many PGD steps and restarts, so the stop lands inside it
            "evaluation": {
                "pgd_steps": 200,
                "pgd_restarts": 5,
                "max_samples": 64,
                "val_max_samples": 8,
                "val_pgd_steps": 1,
                "autoattack": False,
                "measure_latency": False,
                "bounds": [],
            },
            "export": {"formats": ["compressed"]},
            "resources": {"processes": 2},
        }
    )
    rec = StopInEvaluation()
    with pytest.raises(RunCanceled) as err:
        run_job(spec, tmp_path, rec)
    assert rec.evaluating and "final evaluation" in str(err.value)
    assert not multiprocessing.active_children()  # every rank is gone
