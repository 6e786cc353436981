"""The `hydra-compress` console script: a run, a resume of a finished run, and bad input."""

import json

import pytest
from typer.testing import CliRunner

from core.cli import app
from core.errors import ResumeMismatch
from core.pipeline import report as report_mod
from core.pipeline import runner as run_mod

runner = CliRunner()
SPEC = {
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 64, "max_test_samples": 32, "batch_size": 32},
    "objective": {"type": "trades", "eps": 0.1, "step_size": 0.05, "steps": 1},
    "pruning": {"methods": ["lwm"], "k": [0.1]},
    "stages": {"pretrain": {"epochs": 1, "lr": 0.05}, "prune": None, "finetune": {"epochs": 1, "lr": 0.01}},
    "evaluation": {"pgd_steps": 2, "val_pgd_steps": 1, "val_max_samples": 16, "autoattack": False},
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
    by_norm = data["objective_defaults_by_norm"]
    assert set(by_norm) == {"pgd", "trades"}
    assert (by_norm["pgd"]["l2"]["eps"], by_norm["pgd"]["l2"]["step_size"]) == (0.5, 0.125)
    assert by_norm["trades"]["linf"]["eps"] == data["objectives"]["trades"]["eps"] == 8 / 255


def write_spec(tmp_path, **patch):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**SPEC, **patch}))
    return path


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.fixture
def fake_run(monkeypatch):
    """run_job replaced by a recorder (and the report rendering by a stub): the CLI's own checks only."""
    calls = []

    def run_job(spec, out, callbacks, resume=False):
        calls.append({"out": out, "resume": resume, "had_report": (out / "report.json").exists()})
        if fake_run.error is not None:
            raise fake_run.error
        return {}

    fake_run = type("FakeRun", (), {"calls": calls, "error": None})
    monkeypatch.setattr(run_mod, "run_job", run_job)
    monkeypatch.setattr(report_mod, "summary_text", lambda report: "report\n")
    return fake_run


def test_an_architecture_that_does_not_fit_the_data_is_refused_in_one_line(tmp_path, fake_run):
    spec = write_spec(tmp_path, model={"arch": "cnn_small_cifar"})  # 3 channels, mnist5k has 1
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert lines(result.output) == [lines(result.output)[0]]
    assert lines(result.output)[0].startswith("error [incompatible_architecture] model.arch: cnn_small_cifar takes 3")
    assert fake_run.calls == [] and not (tmp_path / "x").exists()


def test_a_finished_run_is_not_overwritten_without_force(tmp_path, fake_run):
    spec = write_spec(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}')
    refused = runner.invoke(app, ["run", str(spec), "--out", str(out)])
    assert refused.exit_code == 2 and fake_run.calls == []
    assert lines(refused.output) == [lines(refused.output)[0]] and "error [run_exists] --out:" in refused.output
    assert "--force" in refused.output and (out / "report.json").read_text() == '{"old": true}'

    resumed = runner.invoke(app, ["run", str(spec), "--out", str(out), "--resume"])  # as before
    assert resumed.exit_code == 0, resumed.output
    assert fake_run.calls[-1] == {"out": out, "resume": True, "had_report": True}

    forced = runner.invoke(app, ["run", str(spec), "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert fake_run.calls[-1] == {"out": out, "resume": False, "had_report": False}  # old report gone first


def test_an_unfinished_run_folder_needs_no_force(tmp_path, fake_run):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    result = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(fake_run.calls) == 1


def test_shape_errors_during_a_run_print_one_coded_line(tmp_path, fake_run):
    spec = write_spec(tmp_path)
    fake_run.error = RuntimeError("mat1 and mat2 shapes cannot be multiplied (32x2048 and 1568x100)")
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert lines(result.output) == [
        "error [shape_mismatch] model.arch: the network does not fit the data: "
        "mat1 and mat2 shapes cannot be multiplied (32x2048 and 1568x100)"
    ]
    fake_run.error = RuntimeError("something else broke")  # a bug keeps its traceback
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "y")])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_a_resume_mismatch_names_the_fields_in_one_line(tmp_path, fake_run):
    fake_run.error = ResumeMismatch(["seed", "stages.prune.lr"])
    result = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--out", str(tmp_path / "x"), "--resume"])
    assert result.exit_code == 2
    assert lines(result.output) == [lines(result.output)[0]]
    assert lines(result.output)[0].startswith("error [resume_mismatch] spec: ")
    assert "seed, stages.prune.lr" in result.output


def test_a_bad_device_override_is_refused_naming_it(tmp_path, fake_run):
    result = runner.invoke(app, ["run", str(write_spec(tmp_path)), "--out", str(tmp_path / "x"), "--device", "tpu"])
    assert result.exit_code == 2 and "error [invalid_spec] device:" in result.output and fake_run.calls == []


def test_a_dataset_of_unknown_shape_runs_with_a_note(tmp_path, fake_run):
    folder = tmp_path / "images"
    folder.mkdir()
    spec = write_spec(tmp_path, dataset={"name": "imagefolder", "path": str(folder)})
    result = runner.invoke(app, ["run", str(spec), "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    assert "note: input shape not checked before the run" in result.output and len(fake_run.calls) == 1
