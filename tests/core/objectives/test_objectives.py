"""Objectives: the losses are the papers' formulas, the attack runs in eval mode with the clean target
computed once, and the builder accepts dicts, spec models and plug-ins."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import core.objectives as objectives
from core.errors import CoreError
from core.objectives import OBJECTIVES, Objective, ObjectiveSpec, build_objective, register_objective
from core.objectives import _attack as attack_mod
from core.objectives.natural import NaturalTraining as NaturalObjective
from core.objectives.pgd import PGDTraining as PGDObjective
from core.objectives.trades import TradesTraining as TradesObjective
from core.pipeline import training as training_mod
from core.pipeline.training import train_step
from core.pruning.masked import convert_to_masked, masked_layers, set_keep_fraction, set_stage


class ModeRecorder(nn.Module):
    """Records (training, grad_enabled) of every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x


def small_model(seed: int = 0) -> tuple[nn.Module, ModeRecorder]:
    torch.manual_seed(seed)
    rec = ModeRecorder()
    model = nn.Sequential(
        rec, nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)
    )
    return model, rec


def batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_defaults_follow_method():
    obj = build_objective({"type": "trades"})
    assert (obj.norm, obj.eps, obj.step_size, obj.steps, obj.beta) == ("linf", 8 / 255, 2 / 255, 10, 6.0)
    l2 = build_objective({"type": "pgd", "norm": "l2"})
    assert l2.norm == "l2" and l2.eps == 0.5 and l2.steps == 10
    for o in (obj, l2, build_objective({"type": "natural"})):
        assert isinstance(o, Objective) and o.describe()["type"] == o.name


def test_natural_is_cross_entropy():
    model, _ = small_model()
    x, y = batch()
    loss, logits = NaturalObjective().loss(model, x, y)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y))
    assert not logits.requires_grad


def test_trades_runs_attack_in_eval_with_target_once_then_two_train_forwards():
    model, rec = small_model()
    x, y = batch()
    model.train()
    obj = TradesObjective(steps=4)
    loss, _ = obj.loss(model, x, y)
    # 1 no-grad eval forward (clean target), 4 eval attack forwards, 2 train forwards (x and x')
    assert rec.calls == [(False, False)] + [(False, True)] * 4 + [(True, True)] * 2
    assert model.training and loss.requires_grad


def test_pgd_objective_modes():
    model, rec = small_model()
    x, y = batch()
    model.train()
    PGDObjective(steps=3).loss(model, x, y)
    assert rec.calls == [(False, False)] + [(False, True)] * 3 + [(True, True)]
    assert model.training


def test_trades_loss_is_the_formula(monkeypatch):
    model, _ = small_model()
    x, y = batch()
    x_adv = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)
    seen = {}

    def fake_pgd(m, xx, yy=None, **kw):
        seen.update(kw)
        return x_adv

    monkeypatch.setattr(attack_mod, "pgd", fake_pgd)
    model.eval()
    with torch.no_grad():
        clean_eval = model(x)
    model.train()
    loss, logits = TradesObjective(beta=6.0).loss(model, x, y)
    torch.testing.assert_close(seen["target_logits"], clean_eval)
    assert seen["loss"] == "kl" and seen["eps"] == 8 / 255
    # recompute in train mode on a copy of the BN state the objective started from is not needed:
    # BN is in train mode, so outputs depend only on the batch
    f_x, f_adv = model(x), model(x_adv)
    want = F.cross_entropy(f_x, y) + 6.0 * F.kl_div(F.log_softmax(f_adv, 1), F.softmax(f_x, 1), reduction="batchmean")
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logits, f_x.detach())
    loss0, _ = TradesObjective(beta=0.0).loss(model, x, y)
    torch.testing.assert_close(loss0, F.cross_entropy(model(x), y))


def test_adversarial_loss_exceeds_natural():
    model, _ = small_model()
    x, y = batch(32)
    model.eval()  # eval everywhere: no BN batch effects in the comparison
    nat, _ = NaturalObjective().loss(model, x, y)
    adv, _ = PGDObjective(eps=0.1, step_size=0.03, steps=5).loss(model, x, y)
    assert adv > nat


def test_train_step_same_for_dense_and_masked(monkeypatch):
    calls = {"n": 0}
    original = training_mod.refresh_masks

    def counting(model):
        calls["n"] += 1
        original(model)

    monkeypatch.setattr(training_mod, "refresh_masks", counting)
    x, y = batch()
    obj = TradesObjective(steps=2)
    dense, _ = small_model()
    opt = torch.optim.SGD(dense.parameters(), lr=0.1)
    before = dense[1].weight.detach().clone()
    train_step(dense, obj, opt, x, y)
    assert not torch.equal(before, dense[1].weight) and calls["n"] == 0

    masked = convert_to_masked(small_model()[0])
    set_keep_fraction(masked, 0.3)
    set_stage(masked, "prune")
    opt = torch.optim.SGD([p for p in masked.parameters() if p.requires_grad], lr=10.0)
    masks = [layer.mask.clone() for _, layer in masked_layers(masked)]
    loss, logits = train_step(masked, obj, opt, x, y, refresh=True)
    assert calls["n"] == 1 and logits.shape == (8, 3) and not loss.requires_grad
    assert any(not torch.equal(m, layer.mask) for m, (_, layer) in zip(masks, masked_layers(masked)))


def test_builder_accepts_spec_models_and_refuses_unknown():
    from core.spec import OBJECTIVE_TYPES

    obj = build_objective(OBJECTIVE_TYPES["trades"](beta=3.0, steps=5))
    assert isinstance(obj, TradesObjective) and obj.beta == 3.0 and obj.steps == 5
    assert isinstance(build_objective(OBJECTIVE_TYPES["pgd"](norm="l2", eps=0.25)), PGDObjective)
    with pytest.raises(CoreError) as err:
        build_objective({"type": "free_lunch"})
    assert err.value.field == "objective.type" and "trades" in err.value.message
    with pytest.raises(CoreError) as err:
        build_objective({"type": "pgd", "eps": -1})
    assert err.value.field == "objective.eps"


def test_direct_construction_validates_like_the_spec():
    assert TradesObjective(beta=2.0).cfg.relu_backward == "smooth"  # the spec's default, one source
    with pytest.raises(CoreError) as err:
        TradesObjective(beta=-1.0)
    assert err.value.field == "objective.beta"


def test_register_objective_plugs_in():
    class ConstantSpec(ObjectiveSpec):
        type: Literal["constant_test"] = "constant_test"
        value: float = 1.0

    class Constant(Objective):
        name = "constant_test"
        Spec = ConstantSpec

        def loss(self, model, x, y):
            logits = model(x)
            return logits.sum() * 0 + self.cfg.value, logits.detach()

        def describe(self):
            return {"type": self.name}

    register_objective(Constant)
    try:
        obj = build_objective({"type": "constant_test", "value": 2.0})  # validated by its own spec model
        assert isinstance(obj, Constant) and obj.cfg.value == 2.0 and not obj.certifies and obj.attacked
        with pytest.raises(CoreError) as err:
            build_objective({"type": "constant_test", "valeu": 2.0})
        assert err.value.field == "objective.valeu"
        with pytest.raises(ValueError):  # a taken name
            OBJECTIVES.register("trades", Constant)

        class Misnamed(Constant):
            name = "other_name"

        with pytest.raises(ValueError):  # the spec's type must be the objective's name
            register_objective(Misnamed)
    finally:
        OBJECTIVES.unregister("constant_test")
    assert "constant_test" not in objectives.known_objectives()


def test_every_objective_module_registers_itself():
    assert set(objectives.known_objectives()) == {"natural", "pgd", "trades", "smoothing", "mixtrain", "crown_ibp"}
    for name, cls in OBJECTIVES.items():
        assert cls.Spec.model_fields["type"].default == name
        assert build_objective({"type": name}).describe()["type"] == name
