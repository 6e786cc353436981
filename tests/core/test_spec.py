"""The job spec refuses bad input with the field named, and carries the paper's defaults."""

import json

import pytest

from core.errors import CoreError
from core.spec import JobSpec, load_spec


def test_defaults_are_the_papers():
    spec = JobSpec()
    assert spec.objective.type == "trades"
    assert spec.objective.eps == pytest.approx(8 / 255) and spec.objective.step_size == pytest.approx(2 / 255)
    assert spec.objective.steps == 10 and spec.objective.beta == 6.0
    assert (spec.stages.prune.epochs, spec.stages.prune.lr, spec.stages.prune.momentum) == (20, 0.1, 0.9)
    assert spec.stages.prune.weight_decay == 1e-4 and spec.stages.prune.schedule == "cosine"
    assert spec.stages.finetune.lr == 0.01
    assert spec.pruning.score_init == "scaled"


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"model": {"arch": "no_such_net"}}, "model.arch"),
        ({"pruning": {"k": [0.0]}}, "pruning.k"),
        ({"pruning": {"k": [1.5]}}, "pruning.k"),
        ({"pruning": {"k": "many"}}, "pruning.k"),
        ({"objective": {"type": "trades", "eps": -1}}, "objective.eps"),
        ({"objective": {"type": "magic"}}, "objective"),
        ({"dataset": {"name": "npz"}}, "dataset"),
        ({"surprise": 1}, "surprise"),
        ({"stages": {"prune": {"epochs": 1, "lr": 0.1, "typo": 3}}}, "stages.prune.typo"),
        ({"device": "tpu"}, "device"),
        ({"stages": {"pretrain": None}}, "spec"),
    ],
)
def test_bad_spec_names_the_field(patch, field):
    with pytest.raises(CoreError) as info:
        load_spec(patch)
    assert info.value.code == "invalid_spec"
    assert info.value.field == field, info.value.message


def test_spec_file_round_trip(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"pruning": {"methods": ["hydra", "lwm"], "k": [0.1, 0.01]}}))
    spec = load_spec(p)
    assert spec.pruning.methods == ["hydra", "lwm"]
    y = tmp_path / "s.yaml"
    y.write_text("pruning:\n  k: [0.05]\nobjective:\n  type: pgd\n  norm: l2\n  eps: 0.5\n")
    spec = load_spec(y)
    assert spec.objective.type == "pgd" and spec.objective.norm == "l2"
    bad = tmp_path / "bad.yaml"
    bad.write_text("pruning: [unclosed")
    with pytest.raises(CoreError) as info:
        load_spec(bad)
    assert info.value.code == "spec_unparsable"


@pytest.mark.parametrize("kind", ["pgd", "trades"])
def test_an_l2_attack_objective_takes_the_l2_defaults(kind):
    obj = load_spec({"objective": {"type": kind, "norm": "l2"}}).objective
    assert (obj.eps, obj.step_size) == (0.5, 0.125)  # not the l_inf 8/255, 2/255
    obj = load_spec({"objective": {"type": kind, "norm": "l2", "eps": 1.0}}).objective
    assert (obj.eps, obj.step_size) == (1.0, 0.125)  # each value defaults on its own
    obj = load_spec({"objective": {"type": kind, "norm": "l2", "eps": None, "step_size": 0.2}}).objective
    assert (obj.eps, obj.step_size) == (0.5, 0.2)
    obj = load_spec({"objective": {"type": kind}}).objective
    assert (obj.eps, obj.step_size) == pytest.approx((8 / 255, 2 / 255))


def test_norm_defaults_survive_a_round_trip_and_follow_a_changed_norm():
    spec = load_spec({"objective": {"type": "trades", "norm": "l2"}})
    again = load_spec(spec.model_dump(mode="json"))
    assert again == spec and again.objective.eps == 0.5
    spec.objective.norm = "linf"  # defaults follow the norm; values the user set do not move
    assert spec.objective.eps == pytest.approx(8 / 255)
    stage = load_spec({"stages": {"finetune": {"epochs": 1, "lr": 0.1, "objective": {"type": "pgd", "norm": "l2"}}}})
    assert stage.stages.finetune.objective.eps == 0.5


def test_evaluation_attacks_the_l2_ball_of_an_l2_objective():
    from core.pipeline.evaluate import attack_settings

    ball = attack_settings(load_spec({"objective": {"type": "pgd", "norm": "l2"}}))
    assert (ball["norm"], ball["eps"], ball["step_size"]) == ("l2", 0.5, 0.125)
