"""The `hydra-compress` console script: a run, a resume of a finished run, and bad input."""
import json

from typer.testing import CliRunner

from core.cli import app

runner = CliRunner()
SPEC = {
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 64, "max_test_samples": 32, "batch_size": 32},
    "objective": {"type": "trades", "eps": 0.1, "step_size": 0.05, "steps": 1},
    "pruning": {"methods": ["lwm"], "k": [0.1]},
    "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": None, "finetune": {"epochs": 1, "lr": 0.01}},
    "evaluation": {"pgd_steps": 2, "val_pgd_steps": 1, "val_max_samples": 16},
    "export": {"formats": ["compressed"]},
}


def test_run_then_resume_then_inspect(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lwm_k0.1" in result.output and "epoch" in result.output
    first = json.loads((out / "report.json").read_text())["comparison"]
    again = runner.invoke(app, ["run", str(spec), "--out", str(out), "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["comparison"] == first
    shown = runner.invoke(app, ["inspect", str(out / "lwm_k0.1.compressed.safetensors")])
    assert shown.exit_code == 0 and '"variant": "lwm_k0.1"' in shown.output


def test_bad_spec_exits_2_naming_the_field(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**SPEC, "pruning": {"k": [2]}}))
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "pruning.k" in result.output and "invalid_spec" in result.output
    assert not (tmp_path / "x").exists()


def test_catalogue_lists_architectures_and_objective_defaults():
    result = runner.invoke(app, ["catalogue"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert "vgg16_bn" in data["architectures"] and "mnist5k" in data["datasets"]
    assert data["objectives"]["trades"]["beta"] == 6.0
