"""The verifiable objectives: losses that train masked scores, the schedules of docs/METHOD.md, and the
certified numbers of their certify(), each tagged with its method."""

import math

import pytest
import torch
import torch.nn.functional as F

from core.certify.bounds import ibp_bounds, margin_spec
from core.certify.smoothing import CERTIFY_METHOD
from core.errors import CoreError
from core.models.zoo import create_model
from core.objectives import OBJECTIVES as REGISTRY
from core.objectives import build_objective
from core.objectives._bounded import robust_ce
from core.objectives.crown_ibp import CrownIBP, CrownIBPObjective
from core.objectives.mixtrain import MixTrain, MixTrainObjective
from core.objectives.smoothing import SmoothingObjective, SmoothingTraining
from core.pruning.masked import convert_to_masked, masked_layers, set_keep_fraction, set_stage
from core.spec import EvaluationSpec

make_smoothing, make_mixtrain, make_crown_ibp = SmoothingTraining, MixTrain, CrownIBP


def tiny_masked_mnist(stage: str = "prune"):
    torch.manual_seed(0)
    model = convert_to_masked(create_model("cnn_small_mnist"))
    set_keep_fraction(model, 0.5)
    set_stage(model, stage)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    return model, x, y


OBJECTIVES = {
    "smoothing_stability": lambda: make_smoothing(SmoothingObjective()),
    "smoothing_gaussian": lambda: make_smoothing(SmoothingObjective(mode="gaussian")),
    "mixtrain": lambda: make_mixtrain(MixTrainObjective(sample_prob=1.0, subset_size=3, eps=0.05)),
    "crown_ibp": lambda: make_crown_ibp(CrownIBPObjective(eps=0.05)),
    "crown_ibp_kappa": lambda: make_crown_ibp(CrownIBPObjective(eps=0.05, kappa=0.5)),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("stage, epoch, fraction", [("pretrain", 3, 0.5), ("prune", 0, 0.0)])
def test_loss_is_finite_and_reaches_the_scores(name, stage, epoch, fraction):
    model, x, y = tiny_masked_mnist("prune")  # only the scores train, as in HYDRA's prune stage
    objective = OBJECTIVES[name]()
    objective.set_epoch(epoch, stage, fraction)
    loss, logits = objective.loss(model, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss) and logits.shape == (8, 10)
    loss.backward()
    for layer_name, layer in masked_layers(model):
        grad = layer.scores.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, layer_name
        assert layer.weight.grad is None  # weights frozen while pruning


def test_mixtrain_adds_the_weighted_bound_loss():
    model, x, y = tiny_masked_mnist("pretrain")
    obj = MixTrain(eps=0.05, sample_prob=1.0, subset_size=8)  # the whole batch, to compare exactly
    obj.set_epoch(30, "pretrain")
    torch.manual_seed(1)
    loss, logits = obj.loss(model, x, y)
    natural = F.cross_entropy(logits, y)
    lam = 0.1 * 2.5**3  # epoch 30, L = 15: floor(15 / 5) = 3
    assert obj.current_lambda == pytest.approx(lam)
    sym = obj.sym_loss(model, x, y, 10)  # permutation-invariant: same examples, same mean
    torch.testing.assert_close(loss, natural + lam * sym, rtol=1e-5, atol=1e-6)
    assert sym > natural  # a bound loss is never below the natural loss of the same points
    never = MixTrain(eps=0.05, sample_prob=0.0)
    loss0, logits0 = never.loss(model, x, y)
    torch.testing.assert_close(loss0, F.cross_entropy(logits0, y))


def test_crown_ibp_loss_is_ibp_after_the_ramp():
    model, x, y = tiny_masked_mnist("finetune")
    obj = CrownIBP(eps=0.05, ramp_epochs=10)
    obj.set_epoch(0, "finetune")
    assert (obj.current_eps, obj.current_beta) == (0.05, 0.0)
    loss, _ = obj.loss(model, x, y)
    lower, _ = ibp_bounds(model, x, 0.05, margin_spec(y, 10))
    torch.testing.assert_close(loss, robust_ce(lower, y, 10), rtol=1e-6, atol=1e-6)


def test_crown_ibp_training_lowers_its_loss():
    model, x, y = tiny_masked_mnist("finetune")
    obj = CrownIBP(eps=0.01, ramp_epochs=0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    for _ in range(15):
        loss, _ = obj.loss(model, x, y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(obj.loss(model, x, y)[0].detach()) < 0.8 * first


# ---------------------------------------------------------------- schedules
def test_mixtrain_lambda_schedule_matches_the_formula():
    obj = make_mixtrain(MixTrainObjective())
    for e in range(120):
        expected = min(50.0, 0.1 * 2.5 ** math.floor(max(e - 15, 0) / 5))
        assert obj.lambda_at(e, "pretrain") == pytest.approx(expected, rel=1e-12)
        expected = min(50.0, 0.1 * 2.5 ** math.floor(e / 5))  # L = 0 in prune and finetune
        assert obj.lambda_at(e, "prune") == pytest.approx(expected, rel=1e-12)
        assert obj.lambda_at(e, "finetune") == pytest.approx(expected, rel=1e-12)
    table = {0: 0.1, 15: 0.1, 19: 0.1, 20: 0.25, 25: 0.625, 30: 1.5625, 45: 24.4140625, 50: 50.0, 10_000: 50.0}
    for e, lam in table.items():
        assert obj.lambda_at(e, "pretrain") == pytest.approx(lam, rel=1e-12)


def test_mixtrain_eps_ramps_in_pretraining_only():
    obj = make_mixtrain(MixTrainObjective())  # eps 0.007 over 15 epochs
    assert obj.eps_at(0, "pretrain", 0.0) == 0.0
    assert obj.eps_at(7, "pretrain", 0.5) == pytest.approx(0.007 * 7.5 / 15)
    assert obj.eps_at(15, "pretrain") == obj.eps_at(40, "pretrain") == pytest.approx(0.007)
    assert obj.eps_at(0, "prune") == obj.eps_at(0, "finetune") == pytest.approx(0.007)
    obj.set_epoch(3, "pretrain", 0.25)
    assert (obj.current_eps, obj.current_lambda) == (pytest.approx(0.007 * 3.25 / 15), 0.1)


def test_crown_ibp_eps_and_beta_ramp_per_iteration():
    obj = make_crown_ibp(CrownIBPObjective())  # eps 0.007 over 120 epochs
    for epoch, frac in [(0, 0.0), (0, 0.5), (59, 0.75), (119, 0.99), (120, 0.0), (199, 0.5)]:
        obj.set_epoch(epoch, "pretrain", frac)
        t = min(1.0, (epoch + frac) / 120)
        assert obj.current_eps == pytest.approx(0.007 * t)
        assert obj.current_beta == pytest.approx(1 - obj.current_eps / 0.007)
    for stage in ("prune", "finetune"):
        obj.set_epoch(0, stage, 0.0)
        assert (obj.current_eps, obj.current_beta) == (pytest.approx(0.007), 0.0)
    with pytest.raises(CoreError):
        obj.set_epoch(0, "warmup")


def test_objectives_take_method_md_defaults():
    s = make_smoothing()
    assert (s.sigma, s.beta, s.mode) == (0.25, 6.0, "stability")
    m = make_mixtrain().cfg
    assert (m.eps, m.sample_prob, m.subset_size, m.ramp_epochs) == (0.007, 0.8, 5, 15)
    assert (m.lambda_init, m.lambda_growth, m.lambda_every, m.lambda_max) == (0.1, 2.5, 5, 50.0)
    c = make_crown_ibp().cfg
    assert (c.eps, c.ramp_epochs, c.kappa) == (0.007, 120, 0.0)
    assert {name for name, cls in REGISTRY.items() if build_objective({"type": name}).certifies} == {
        "smoothing",
        "mixtrain",
        "crown_ibp",
    }
    assert {name for name, cls in REGISTRY.items() if cls.needs_bounds} == {"mixtrain", "crown_ibp"}
    assert "CROWN" in make_mixtrain().describe()["bound"] and "IBP" in make_crown_ibp().describe()["bound"]
    assert CERTIFY_METHOD in make_smoothing().describe()["certificate"]


# ---------------------------------------------------------------- certification
def test_evaluate_certified_tags_every_number_with_its_method():
    model, x, y = tiny_masked_mnist("eval")
    ev = EvaluationSpec(smoothing={"n0": 10, "n": 60, "radii": [0.0, 0.25]}, certify_max_samples=4)
    smooth = make_smoothing().certify(model, x[:4], y[:4], ev, seed=3)  # the caller draws the sample
    assert "noise seed 3" in smooth["procedures"]["smoothed_acc"]  # the job's seed, not always 0
    assert {"certified_acc@0", "certified_acc@0.25", "smoothed_acc", "abstain_rate", "mean_certified_radius"} <= set(
        smooth
    )
    assert smooth["details"]["num_samples"] == 4 and smooth["method"] == CERTIFY_METHOD
    assert set(smooth["procedures"]) | {"mean_certified_radius"} == set(smooth["methods"])
    assert smooth["certified_acc@0.25"] <= smooth["certified_acc@0"] <= smooth["smoothed_acc"]
    for cfg in (CrownIBPObjective(eps=0.01), MixTrainObjective(eps=0.01)):
        out = build_objective(cfg).certify(model, x, y, ev, seed=0)
        assert set(out["procedures"]) == set(out["methods"]) == {"verified_acc_ibp", "verified_acc_crown_ibp"}
        assert "IBP" in out["procedures"]["verified_acc_ibp"] and "eps=0.01" in out["procedures"]["verified_acc_ibp"]
        assert 0 <= out["verified_acc_ibp"] <= out["details"]["clean_acc"]
    assert build_objective({"type": "pgd"}).certify(model, x, y, ev, seed=0) is None
