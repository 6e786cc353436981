"""resources: data-parallel ranks on CPU (gloo, 2 processes) against one process, resume across world
sizes, a rank killed mid-epoch, bf16 autocast on CPU, the compile fallback and what the spec refuses.

The network has no BatchNorm (cnn_small_mnist) and the objective draws no random numbers (natural), so
two ranks with half the batch each must reproduce the one-process run up to the order of the float
sums in the gradient average."""

import json
import multiprocessing
import os
import signal

import pytest
import torch
from torch import nn

from core.callbacks import RunCallbacks
from core.data.loaders import DeviceBatches, EpochSampler, train_loader
from core.errors import CoreError, RunCanceled
from core.io import checkpoint as ckpt
from core.pipeline import resources as resources_mod
from core.pipeline.distributed import RankLost
from core.pipeline.resources import COMPILE_FALLBACK
from core.pipeline.runner import run_job
from core.spec import load_spec
from core.vocab import CHECKPOINT_NAME

SPEC = {
    "seed": 5,
    "device": "cpu",
    "model": {"arch": "cnn_small_mnist"},
    "dataset": {"name": "mnist5k", "max_train_samples": 128, "max_test_samples": 32, "batch_size": 32},
    "objective": {"type": "natural"},
    # learned allocation: the per-layer rates train with their own optimizer, and must stay identical
    "pruning": {"methods": ["hydra"], "k": [0.1], "allocation": "learned"},
    "stages": {"pretrain": {"epochs": 2, "lr": 0.05}, "prune": {"epochs": 1, "lr": 0.1}, "finetune": None},
    "evaluation": {
        "pgd_steps": 1,
        "val_pgd_steps": 1,
        "val_max_samples": 16,
        "autoattack": False,
        "pgd_smooth_relu": False,
        "measure_latency": False,
        "bounds": [],
    },
    "export": {"formats": ["compressed"]},
}


def spec(**resources):
    data = json.loads(json.dumps(SPEC))
    data["resources"] = resources
    return load_spec(data)


class Recorder(RunCallbacks):
    """Events and epochs as the caller sees them; optionally cancels, or kills a rank, once a
    checkpoint exists."""

    def __init__(self, cancel_after_checkpoint=False, kill_after_checkpoint=False):
        self.events, self.checkpoints = [], 0
        self.cancel_after_checkpoint, self.kill_after_checkpoint = cancel_after_checkpoint, kill_after_checkpoint
        self.killed = None

    def on_event(self, kind, payload):
        self.events.append((kind, payload))

    def on_checkpoint(self, path):
        self.checkpoints += 1

    def on_progress(self, **kw):
        if self.kill_after_checkpoint and self.checkpoints and self.killed is None:
            ranks = multiprocessing.active_children()
            self.killed = ranks[-1].pid
            os.kill(self.killed, signal.SIGKILL)  # a rank dies mid-epoch (out of memory, a crash)

    def should_cancel(self):
        return self.cancel_after_checkpoint and self.checkpoints > 0

    def epochs(self):
        return [p["metrics"] for k, p in self.events if k == "epoch_finished"]


def final_state(out):
    return ckpt.load_checkpoint(out / CHECKPOINT_NAME)["model"]


def assert_same_run(out_a, report_a, out_b, report_b):
    a, b = final_state(out_a), final_state(out_b)
    assert a.keys() == b.keys()
    for name in a:
        if name.endswith("mask"):
            assert torch.equal(a[name], b[name]), name  # masks identical, not merely close
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    for variant, result in report_a["variants"].items():
        for metric, value in result["metrics"].items():
            assert report_b["variants"][variant]["metrics"][metric] == pytest.approx(value, abs=1e-6), metric


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    rec = Recorder()
    return out, run_job(spec(), out, rec), rec


def test_two_ranks_reproduce_one_process(one_process, tmp_path):
    out1, report1, rec1 = one_process
    rec2 = Recorder()
    report2 = run_job(spec(processes=2), tmp_path, rec2)
    assert report2["resources"]["world_size"] == 2 and report2["resources"]["backend"] == "gloo"
    assert report1["resources"]["world_size"] == 1
    assert "2 rank(s), backend `gloo`" in (tmp_path / "report.md").read_text()
    assert_same_run(out1, report1, tmp_path, report2)
    # the epoch metrics count the global batch, as one process does (rank 0 reports them)
    e1, e2 = rec1.epochs(), rec2.epochs()
    assert len(e1) == len(e2) == 3
    for m1, m2 in zip(e1, e2):
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
        assert m2["train_acc"] == m1["train_acc"] and m2["val_acc"] == m1["val_acc"]
    # rank 0 alone wrote: one event stream, no duplicates
    kinds = [k for k, _ in rec2.events]
    assert kinds.count("run_finished") == 1 and kinds.count("stage_started") == kinds.count("stage_finished")


def test_one_process_checkpoint_resumes_under_two_ranks(one_process, tmp_path):
    out1, report1, _ = one_process
    with pytest.raises(RunCanceled):
        run_job(spec(), tmp_path, Recorder(cancel_after_checkpoint=True))
    report = run_job(spec(processes=2), tmp_path, Recorder(), resume=True)
    assert report["resources"]["world_size"] == 2
    assert_same_run(out1, report1, tmp_path, report)


def test_rank_killed_mid_epoch_fails_then_resumes_in_one_process(one_process, tmp_path):
    out1, report1, _ = one_process
    rec = Recorder(kill_after_checkpoint=True)
    with pytest.raises(RankLost):  # died, not a bug: the worker retries such an attempt (worker/runner.py)
        run_job(spec(processes=2), tmp_path, rec)
    assert rec.killed is not None
    assert not multiprocessing.active_children()  # every rank is gone: nothing left running
    saved = ckpt.load_checkpoint(tmp_path / CHECKPOINT_NAME)
    # at least the first finished epoch stands (how far the ranks got before the kill landed depends on
    # how fast the caller relays their progress: under load a whole step may finish first)
    assert tuple(saved["cursor"][:2]) >= (0, 1)
    report = run_job(spec(), tmp_path, Recorder(), resume=True)  # two ranks -> one process
    assert_same_run(out1, report1, tmp_path, report)


def test_bf16_autocast_on_cpu_with_the_compile_fallback(one_process, tmp_path, monkeypatch):
    def broken_compile(model, *a, **k):  # a backend that cannot build the graph at the first call
        class Failing(nn.Module):
            def forward(self, *args, **kwargs):
                raise RuntimeError("inductor: no compiler for this platform")

        return Failing()

    monkeypatch.setattr(resources_mod.torch, "compile", broken_compile)
    rec = Recorder()
    report = run_job(spec(precision="bf16", eval_precision="bf16", channels_last=True, compile=True), tmp_path, rec)
    res = report["resources"]
    assert (res["precision"], res["eval_precision"], res["channels_last"], res["compile"]) == (
        "bf16",
        "bf16",
        True,
        False,
    )
    fallbacks = [p for k, p in rec.events if k == COMPILE_FALLBACK]
    assert len(fallbacks) == 1 and "no compiler" in fallbacks[0]["error"]
    # every number of the final evaluation says it was produced under bf16
    for result in report["variants"].values():
        assert result["precision"] == "bf16"
        assert result["procedures"] and all("bf16" in text for text in result["procedures"].values())
    # bf16 trains like fp32 (same batches): the epoch losses within a few percent, not bit-identical
    fp32 = one_process[2].epochs()
    for m, f in zip(rec.epochs(), fp32):
        assert m["loss"] == pytest.approx(f["loss"], rel=0.05) and m["loss"] != f["loss"]


def test_fp32_evaluation_is_stated_beside_bf16_training(one_process):
    _, report, _ = one_process
    assert report["resources"]["precision"] == "fp32"
    assert all(r["precision"] == "fp32" for r in report["variants"].values())


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ({"precision": "fp16"}, "resources.precision"),
        ({"eval_precision": "fp16"}, "resources.eval_precision"),
        ({"gpus": 2}, "resources.gpus"),
        ({"sync_bn": True, "processes": 2}, "resources.sync_bn"),
        ({"processes": 3}, "dataset.batch_size"),  # 32 does not split over 3 ranks
    ],
)
def test_refused_at_validation_with_the_field_named(resources, field):
    with pytest.raises(CoreError) as err:
        spec(**resources)
    assert err.value.field == field


def test_device_batches_are_the_loader_batches():
    images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    labels = torch.arange(50) % 10
    from core.data.datasets import TensorImageDataset

    ds = TensorImageDataset(images, labels)
    for replicas, rank in ((1, 0), (2, 1)):
        expected = list(train_loader(ds, 8, seed=3, epoch=2, num_replicas=replicas, rank=rank))
        got = list(DeviceBatches(images, labels, EpochSampler(50, 3, 2, replicas, rank), 8))
        assert len(got) == len(expected)
        for (x1, y1), (x2, y2) in zip(expected, got):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


CALLER = """
import json, multiprocessing, os, sys
from core.callbacks import RunCallbacks
from core.pipeline.runner import run_job
from core.spec import load_spec

data = json.loads(sys.argv[1])
out, ready = sys.argv[2], sys.argv[3]

class Announce(RunCallbacks):
    def on_progress(self, **kw):  # the ranks run: say so once
        if not os.path.exists(ready):
            with open(ready + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(ready + ".tmp", ready)

run_job(load_spec(data), out, Announce())
"""


def _descendants(pid):
    """Every live process below ``pid`` (from /proc; zombies count as gone)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ranks_exit_when_the_caller_is_killed(tmp_path):
    """The caller (a worker's attempt, the CLI) killed outright while its ranks train: no rank (nor the
    forkserver that forked them) outlives it by more than a few seconds."""
    import subprocess
    import sys
    import time

    data = json.loads(json.dumps(SPEC))
    data["stages"]["pretrain"]["epochs"] = 50  # still training when the caller is killed
    data["resources"] = {"processes": 2}
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, json.dumps(data), str(tmp_path / "out"), str(ready)], env=env
    )
    below: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline and caller.poll() is None:
            time.sleep(0.2)
        assert ready.exists(), "the ranks never reported progress"
        below = _descendants(caller.pid)
        assert len(below) >= 3  # the forkserver and the two ranks (at least)
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in below) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in below if _alive(p)]
        assert not left, f"processes outlived their caller: {left}"
    finally:
        if caller.poll() is None:
            caller.kill()
        for p in below:  # what this test started and left behind (after a failure)
            if _alive(p):
                os.kill(p, signal.SIGKILL)
