"""Hostile spec files for the core (issue 16 items 1, 3 and 6): ``load_spec`` / ``hydra-compress run``
refuse an alias bomb, deep nesting and a huge integer before expanding or recursing, and the run's
preflight refuses values no real job can use, each with a ``CoreError`` naming the field."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from core.errors import CoreError
from core.pipeline.preflight import check_host, preflight
from core.safe_parse import MAX_DEPTH, check_json, json_depth, load_json, load_yaml
from core.spec import load_spec


def alias_bomb(levels: int = 9, fanout: int = 10) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_spec_file_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())  # 10**9 leaves once expanded
    started = time.monotonic()
    with pytest.raises(CoreError) as info:
        load_spec(path)
    assert time.monotonic() - started < 1.0
    assert info.value.code == "yaml_alias_refused" and info.value.field == "spec"
    assert "*a0" in info.value.message and "line 2" in info.value.message and str(path) in info.value.message


@pytest.mark.parametrize(
    ("suffix", "text", "code"),
    [
        (".yaml", "model:\n  kwargs: " + "[" * 5000 + "]" * 5000 + "\n", "nesting_too_deep"),
        (".json", '{"model": {"kwargs": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + "}}", "nesting_too_deep"),
        (".yaml", "seed: " + "7" * 5000 + "\n", "number_too_long"),
        (".json", '{"seed": ' + "7" * 5000 + "}", "number_too_long"),
        (".yaml", "seed: " + ":".join(["1"] * 3000) + "\n", "number_too_long"),  # YAML 1.1 base 60
    ],
)
def test_deep_or_huge_spec_files_are_refused(tmp_path: Path, suffix: str, text: str, code: str) -> None:
    path = tmp_path / f"spec{suffix}"
    path.write_text(text)
    with pytest.raises(CoreError) as info:
        load_spec(path)
    assert info.value.code == code, info.value


def test_the_json_check_names_the_place_and_ignores_brackets_in_strings() -> None:
    with pytest.raises(CoreError) as info:
        check_json('{"model": {"kwargs": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}}", "body")
    assert info.value.field == "body.model.kwargs.a.a.a.a.a.a.…", info.value.field  # 8 levels named
    with pytest.raises(CoreError) as info:
        check_json('{"k": [1, 2, ' + "3" * 4301 + "]}")
    assert info.value.code == "number_too_long" and info.value.field == "k.2"
    text = json.dumps({"name": "[" * 100 + '\\"{' * 100, "x": [[1]]})[:-1] + ', "f": 0.' + "1" * 5000 + "}"
    check_json(text)  # brackets inside a string (escaped quotes too) are text; a long float parses
    assert json_depth(text.encode()) == 3
    assert load_json('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    depth_ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(depth_ok) is not None and load_yaml("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))


def test_ordinary_specs_still_load(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("seed: &s 3\npruning:\n  k: [0.5, 0.1]\nstages:\n  prune: {epochs: 1, lr: 0.1}\n")
    spec = load_spec(path)
    assert spec.seed == 3 and spec.pruning.k == [0.5, 0.1] and spec.stages.prune.epochs == 1


@pytest.mark.parametrize(
    ("override", "code", "field"),
    [
        ({"objective": {"type": "pgd", "eps": 1e9}}, "invalid_eps", "objective.eps"),
        ({"objective": {"type": "pgd", "eps": 1.0}}, None, None),  # the whole box: silly, but a ball a job can use
        ({"objective": {"type": "pgd", "norm": "l2", "eps": 28.0}}, None, None),  # sqrt(1*28*28) = 28
        ({"objective": {"type": "pgd", "norm": "l2", "eps": 28.01}}, "invalid_eps", "objective.eps"),
        ({"evaluation": {"eps": 1.5, "norm": "linf"}}, "invalid_eps", "evaluation.eps"),
        ({"evaluation": {"eps": 1.5, "norm": "l2"}}, None, None),
        (
            {"stages": {"prune": {"epochs": 1, "lr": 0.1, "objective": {"type": "trades", "eps": 3}}}},
            "invalid_eps",
            "stages.prune.objective.eps",
        ),
        ({"pruning": {"k": [0.5, 1e-300]}}, "invalid_k", "pruning.k"),
        ({"pruning": {"k": [1e-4]}}, None, None),  # k·n above 1e-6: one weight of every layer is kept
    ],
)
def test_preflight_refuses_values_no_job_can_use(override: dict, code: str | None, field: str | None) -> None:
    spec = load_spec(override)
    if code is None:
        assert preflight(spec) is None
        return
    with pytest.raises(CoreError) as info:
        preflight(spec)
    assert (info.value.code, info.value.field) == (code, field), info.value
    if code == "invalid_k":
        assert "keeps no weight of layer 'net.0'" in info.value.message, info.value.message


def test_the_run_refuses_a_device_or_cores_this_machine_lacks() -> None:
    missing = torch.cuda.device_count()
    with pytest.raises(CoreError) as info:
        check_host(load_spec({"device": f"cuda:{missing + 998}"}))
    assert (info.value.code, info.value.field) == ("device_unavailable", "device")
    assert f"{missing} GPU" in info.value.message
    if missing == 0:
        with pytest.raises(CoreError):
            check_host(load_spec({"device": "cuda"}))
    cores = os.cpu_count() or 1
    if cores < 64:
        with pytest.raises(CoreError) as info:
            check_host(load_spec({"dataset": {"num_workers": 64}}))
        assert (info.value.code, info.value.field) == ("too_many_workers", "dataset.num_workers")
    check_host(load_spec({"device": "cpu", "dataset": {"num_workers": min(cores, 64)}}))
