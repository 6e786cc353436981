"""`hydra-compress run` progress suits where it goes: a bar only on a terminal; in a pipe or a log file
one line per stage, epoch and evaluation, with no bar redraws (carriage returns)."""

import io

from core.cli import ConsoleCallbacks

PLAN = [("pretrain", "dense", 3), ("prune", "hydra_k0.1", 2), ("finetune", "hydra_k0.1", 2)]
BATCHES = 5


def _drive(cb: ConsoleCallbacks) -> None:
    metrics = {"loss": 0.5, "train_acc": 0.75}
    for stage, variant, epochs in PLAN:
        cb.on_event("stage_started", {"stage": stage, "variant": variant, "epochs": epochs})
        for epoch in range(1, epochs + 1):
            for _ in range(BATCHES):
                cb.on_progress(stage=stage, variant=variant, epoch=epoch, epochs=epochs, fraction=0.0, metrics=metrics)
            cb.on_event(
                "epoch_finished",
                {
                    "stage": stage,
                    "variant": variant,
                    "epoch": epoch,
                    "epochs": epochs,
                    "metrics": {**metrics, "val_acc": 0.7},
                },
            )
        cb.on_event("stage_finished", {"stage": stage, "variant": variant})
    for variant in ("dense", "hydra_k0.1"):
        cb.on_event("evaluation_finished", {"variant": variant, "metrics": {"benign_acc": 0.9}})


def _check_lines(text: str) -> None:
    assert "\r" not in text and "\x1b" not in text  # no redraws, no cursor moves
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("-- ")] == [f"-- {s} {v} ({e} epochs)" for s, v, e in PLAN]
    epoch_lines = [ln for ln in lines if " epoch " in ln]
    assert len(epoch_lines) == sum(e for _, _, e in PLAN)  # exactly one line per epoch
    for stage, variant, epochs in PLAN:
        for epoch in range(1, epochs + 1):
            assert (
                sum(ln.startswith(f"{stage:8s} {variant:14s} epoch {epoch:>3}/{epochs:<3}") for ln in epoch_lines) == 1
            )
    assert len([ln for ln in lines if ln.startswith("evaluate ")]) == 2
    assert len(lines) == len(PLAN) + len(epoch_lines) + 2  # nothing else


def test_off_a_terminal_one_line_per_stage_and_epoch_and_no_bar(capsys):
    _drive(ConsoleCallbacks())  # the defaults: stdout for lines, stderr for the bar; both captured (no TTY)
    captured = capsys.readouterr()
    assert captured.err == ""  # no bar at all
    _check_lines(captured.out)


def test_into_files_the_same_lines():
    out, bar_out = io.StringIO(), io.StringIO()
    _drive(ConsoleCallbacks(out=out, bar_out=bar_out))
    assert bar_out.getvalue() == ""
    _check_lines(out.getvalue())


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_beside_the_same_lines():
    out, bar_out = io.StringIO(), _Terminal()
    _drive(ConsoleCallbacks(out=out, bar_out=bar_out))
    assert "\r" in bar_out.getvalue() and "batch" in bar_out.getvalue()  # the bar draws there
    _check_lines(out.getvalue())  # the lines stay whole
