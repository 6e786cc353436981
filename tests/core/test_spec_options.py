"""The strategies' options models nested in the spec (``pruning.learned``, ``evaluation.smoothing``,
``evaluation.bounds``), and the old flat spellings every stored spec still has."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.certify.bounds import BoundOptions
from core.certify.smoothing import SmoothingOptions
from core.errors import CoreError
from core.pruning.pruners import LearnedChannelOptions, LearnedOptions
from core.spec import JobSpec, load_spec, nested_spec, same_spec

ROOT = Path(__file__).parents[2]

FLAT = {
    "pruning": {
        "allocation": "learned",
        "k": [0.1],
        "learned_gamma": 3.0,
        "learned_gamma_steps": 2,
        "learned_gamma_ratio": 0.5,
        "learned_tau": 0.2,
        "learned_lr": 0.05,
    },
    "evaluation": {
        "smoothing_n0": 10,
        "smoothing_n": 200,
        "smoothing_alpha": 0.01,
        "smoothing_radii": [0.0, 0.5],
        "smoothing_batch_size": 64,
        "bounds": ["ibp"],
        "bound_batch_size": 8,
    },
}
NESTED = {
    "pruning": {
        "allocation": "learned",
        "k": [0.1],
        "learned": {"gamma": 3.0, "gamma_steps": 2, "gamma_ratio": 0.5, "tau": 0.2, "lr": 0.05},
    },
    "evaluation": {
        "smoothing": {"n0": 10, "n": 200, "alpha": 0.01, "radii": [0.0, 0.5], "batch_size": 64},
        "bounds": {"methods": ["ibp"], "batch_size": 8},
    },
}


def old_flat_form(dump: dict[str, Any]) -> dict[str, Any]:
    """A JSON dump of today's spec as the version before the options were nested wrote it."""
    old = copy.deepcopy(dump)
    pruning, evaluation = old["pruning"], old["evaluation"]
    pruning.update({f"learned_{k}": v for k, v in pruning.pop("learned").items()})
    evaluation.update({f"smoothing_{k}": v for k, v in evaluation.pop("smoothing").items()})
    bounds = evaluation.pop("bounds")
    evaluation.update(bounds=bounds["methods"], bound_batch_size=bounds["batch_size"])
    return old


def test_the_flat_spec_is_the_nested_spec_and_dumps_nested():
    flat, nested = load_spec(FLAT), load_spec(NESTED)
    assert flat == nested
    dump = flat.model_dump(mode="json")
    assert dump == nested.model_dump(mode="json")
    assert dump["pruning"]["learned"] == NESTED["pruning"]["learned"]
    assert dump["evaluation"]["smoothing"] == NESTED["evaluation"]["smoothing"]
    assert dump["evaluation"]["bounds"] == NESTED["evaluation"]["bounds"]
    assert not [
        k for k in (*dump["pruning"], *dump["evaluation"]) if k.startswith(("learned_", "smoothing_", "bound_"))
    ]
    assert load_spec(old_flat_form(dump)) == flat  # and the old dump of it validates to the same spec


def test_the_defaults_are_the_flat_fields_defaults():
    spec = load_spec({})
    assert spec.pruning.learned == LearnedOptions(gamma=10.0, gamma_steps=4, gamma_ratio=0.1, tau=0.05, lr=0.01)
    assert spec.evaluation.smoothing == SmoothingOptions(
        n0=100, n=10_000, alpha=0.001, radii=[0.0, 0.25, 0.5, 0.75, 1.0], batch_size=256
    )
    assert spec.evaluation.bounds == BoundOptions(methods=["ibp", "crown_ibp"], batch_size=64)


def test_flat_and_nested_options_merge_and_agreeing_values_are_accepted():
    spec = load_spec({"pruning": {"learned": {"tau": 0.2}, "learned_lr": 0.05, "learned_tau": 0.2}})
    assert (spec.pruning.learned.tau, spec.pruning.learned.lr, spec.pruning.learned.gamma) == (0.2, 0.05, 10.0)
    # a section given as a model instance (Python callers) keeps what it set, no more
    section = {"bounds": BoundOptions(batch_size=4), "bound_batch_size": 4, "smoothing": SmoothingOptions(n=50)}
    evaluation = load_spec({"evaluation": section}).evaluation
    assert evaluation.bounds.batch_size == 4 and evaluation.bounds.methods == ["ibp", "crown_ibp"]
    assert evaluation.smoothing.n == 50


@pytest.mark.parametrize(
    ("section", "given", "field"),
    [
        ("pruning", {"learned": {"gamma": 4.0}, "learned_gamma": 3.0}, "learned_gamma"),
        ("evaluation", {"smoothing": {"n": 5}, "smoothing_n": 6}, "smoothing_n"),
        ("evaluation", {"bounds": ["ibp"], "bound_batch_size": 2, "smoothing_radii": [0.5]}, None),
        ("evaluation", {"bounds": {"batch_size": 3}, "bound_batch_size": 2}, "bound_batch_size"),
    ],
)
def test_an_option_given_flat_and_nested_with_different_values_is_refused(section, given, field):
    if field is None:  # no option given twice: accepted
        load_spec({section: given})
        return
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({section: given})
    (error,) = exc.value.errors()
    assert error["type"] == "conflicting_options" and error["loc"] == (section, field)
    with pytest.raises(CoreError) as err:
        load_spec({section: given})
    assert err.value.field == f"{section}.{field}" and "old spelling" in err.value.message


def test_a_bad_flat_value_is_named_where_it_went():
    with pytest.raises(CoreError) as err:
        load_spec({"pruning": {"learned_tau": 0}})
    assert err.value.field == "pruning.learned.tau"
    with pytest.raises(CoreError) as err:
        load_spec({"evaluation": {"bounds": ["sideways"]}})
    assert err.value.field == "evaluation.bounds.methods.0"


@pytest.mark.parametrize(
    "path",
    sorted(
        [*ROOT.glob("examples/*.yaml"), *ROOT.glob("launch/*.yaml")],
        key=str,
    ),
    ids=lambda p: p.name,
)
def test_every_shipped_spec_validates_and_round_trips_through_its_old_form(path):
    spec = load_spec(path)
    dump = spec.model_dump(mode="json")
    assert load_spec(dump) == spec
    assert load_spec(old_flat_form(dump)) == spec
    assert same_spec(old_flat_form(dump), dump) and not same_spec({**dump, "seed": dump["seed"] + 1}, dump)
    text = path.read_text()
    assert "smoothing_" not in text and "learned_" not in text and "bound_batch" not in text  # shipped nested


def test_the_raw_spec_nested_like_the_dump():
    raw = copy.deepcopy(FLAT)
    assert nested_spec(raw) == {
        "pruning": {**NESTED["pruning"]},
        "evaluation": NESTED["evaluation"],
    }
    assert raw == FLAT  # not changed in place
    assert nested_spec([1]) == [1] and nested_spec({"pruning": "x"}) == {"pruning": "x"}


def test_the_pruners_read_their_options_from_the_nested_section():
    pruning = load_spec(FLAT).pruning
    assert LearnedOptions.from_pruning(pruning) is pruning.learned
    channel = load_spec({"pruning": {**FLAT["pruning"], "granularity": "channel", "budget": "macs"}}).pruning
    options = LearnedChannelOptions.from_pruning(channel)
    assert isinstance(options, LearnedChannelOptions)
    assert options.budget == "macs" and options.learned.tau == 0.2 and options.learned.lr == 0.05
