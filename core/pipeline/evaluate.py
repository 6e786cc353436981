"""Evaluation: benign accuracy, empirical robust accuracy as the per-example worst case over every
registered attack (``core.robust.suite``: our PGD, the smooth-ReLU PGD, the reference AutoAttack), certified accuracy for the verifiable objectives, and sparsity measured
from the exported weights.

Every number leaves here with the exact procedure that produced it (``procedures``), the sample it
was measured on (``samples``: size and count per class; every capped evaluation is a seeded,
class-stratified sample, see ``core.data.sampling``) and its 95% Clopper-Pearson interval (``intervals``,
``counts``), so a report never shows a robust accuracy without saying which attack, on what, and how
sure.

**Sharded.** Given a :class:`Shard` (a rank of a data-parallel job, ``core.pipeline.distributed``), every
rank evaluates a contiguous block of whole batches of each sample — the benign pass, each attack (of the
examples it attacks, ``Attack.attacks``) and the certificate (``Objective.certify_examples``) — and the
per-example results are gathered in the sample's order, so every rank tallies the same vectors a
one-process run computes and the worst case over attacks stays per-example. The numbers do not depend on
the number of ranks: an attack that draws from the global RNG (our PGD's random starts) first draws
what the batches before its block draw (``Attack.skip``) and after its block what the batches after it
draw; pyautoattack reseeds before every batch; CERTIFY's noise generator draws and discards the earlier
examples' noise; the bounds are deterministic.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from core.config import EPS_8_255
from core.data.datasets import test_loader
from core.data.sampling import dataset_labels, describe_sample, stratified_order, stratified_subset
from core.objectives import Objective, build_objective
from core.pipeline.stats import INTERVAL_METHOD, clopper_pearson
from core.robust.attacks import pgd
from core.robust.suite import (
    MASKING_MARGIN,
    Attack,
    AttackSettings,
    ShouldStop,
    clean_flags,
    masking_check,
    never_stop,
    planned_attacks,
    stop_checked_forward,
    stop_if_asked,
)
from core.spec import JobSpec


def attack_settings(spec: JobSpec) -> dict[str, Any]:
    """The l_p ball the job is evaluated on: the evaluation's own, else the objective's, else 8/255 l_inf."""
    ball = spec.objective.ball()
    ev = spec.evaluation
    eps = ev.eps or (ball.eps if ball else EPS_8_255)
    norm = ev.norm or (ball.norm if ball else "linf")
    step = ev.pgd_step_size or (ball.step_size if ball and ball.step_size else eps / 4)
    return {"norm": norm, "eps": float(eps), "step_size": float(step)}


def sample_seed(spec: JobSpec) -> int:
    """The seed of every evaluation sample of the job (one for all of a multi-seed job's seeds)."""
    return spec.evaluation.sample_seed if spec.evaluation.sample_seed is not None else spec.seed


@dataclass(frozen=True)
class Shard:
    """This process's part of an evaluation sharded over ``size`` data-parallel ranks. ``gather(obj)``
    returns every rank's ``obj`` in rank order; it is a collective: every rank calls it at the same
    points, which the evaluation guarantees by running the same steps on every rank."""

    rank: int
    size: int
    gather: Callable[[Any], list[Any]]

    @classmethod
    def whole(cls) -> Shard:
        """One process evaluating everything: a sharded evaluation of one rank is the plain one."""
        return cls(0, 1, lambda obj: [obj])

    def block(self, length: int, batch: int) -> tuple[int, int]:
        """This rank's contiguous block ``[start, stop)`` of ``length`` examples run in batches of
        ``batch``: whole batches, as even a split of them as possible (the last rank may get fewer)."""
        batches = -(-length // batch)
        first, last = batches * self.rank // self.size, batches * (self.rank + 1) // self.size
        return min(first * batch, length), min(last * batch, length)


def _sharded(
    shard: Shard,
    work: torch.Tensor,
    length: int,
    batch: int,
    run: Callable[[torch.Tensor | slice], torch.Tensor],
    skip: Callable[[torch.Tensor | slice], None] | None = None,
) -> torch.Tensor:
    """Per example of a sample of ``length``: ``run(positions)``'s flags for the positions ``work`` (in
    batches of ``batch``; this rank runs its block, ``skip`` draws the RNG of the batches before and
    after it), gathered from every rank; False off ``work``. When ``work`` is the whole sample the
    positions are a slice (a view of the sample, no copy)."""
    start, stop = shard.block(len(work), batch)
    whole = len(work) == length  # work is then arange(length): positions are contiguous
    before, mine, after = (
        (slice(0, start), slice(start, stop), slice(stop, length))
        if whole
        else (work[:start], work[start:stop], work[stop:])
    )
    if skip is not None:
        skip(before)
    local = run(mine) if stop > start else torch.zeros(0, dtype=torch.bool)
    if skip is not None:
        skip(after)
    parts = shard.gather(local.cpu()) if shard.size > 1 else [local]
    flags = torch.cat([part.to(work.device) for part in parts])
    if whole:
        return flags
    out = torch.zeros(length, dtype=torch.bool, device=work.device)
    out[work] = flags
    return out


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


def accuracy(
    model: nn.Module,
    ds: Dataset,
    device: torch.device,
    batch_size: int,
    attack: dict[str, Any] | None = None,
) -> tuple[float, float | None]:
    """Benign accuracy and, when ``attack`` is given, accuracy on PGD examples (per-example worst
    over restarts). Model in eval mode throughout."""
    was_training = model.training
    model.eval()
    clean = robust = total = 0
    for x, y in test_loader(ds, batch_size):
        x, y = x.to(device), y.to(device)
        clean += int((_predict(model, x) == y).sum())
        if attack is not None:
            x_adv = pgd(model, x, y, loss="ce", **attack)
            robust += int((_predict(model, x_adv) == y).sum())
        total += len(y)
    model.train(was_training)
    n = max(1, total)
    return clean / n, (robust / n if attack is not None else None)


def validate(model: nn.Module, test_ds: Dataset, spec: JobSpec, device: torch.device) -> dict[str, float]:
    """Per-epoch monitoring: benign and PGD accuracy (``val_pgd_steps``, one random start) on a seeded
    class-stratified sample of ``val_max_samples`` test examples. Monitoring only; the report uses the
    last epoch, not the best."""
    ev = spec.evaluation
    attack = {**attack_settings(spec), "steps": ev.val_pgd_steps, "restarts": 1, "random_start": True}
    ds = stratified_subset(test_ds, ev.val_max_samples, sample_seed(spec))
    clean, rob = accuracy(model, ds, device, spec.dataset.test_batch_size, attack)
    return {"val_acc": clean, "val_pgd_acc": float(rob or 0.0)}


def _tensors(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(ds[i] for i in range(len(ds))))  # type: ignore[arg-type]
    return torch.stack(xs), torch.as_tensor(ys)


def _sample_indices(test_ds: Dataset, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices into ``test_ds`` of the stratified sample of ``limit`` (all when None)."""
    n = len(test_ds)  # type: ignore[arg-type]
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(stratified_order(dataset_labels(test_ds), seed)[:limit])


class _Tally:
    """Metrics with their procedures, counts and 95% intervals; each attack's wall seconds and what its
    library printed or warned while it ran."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.procedures: dict[str, str] = {}
        self.counts: dict[str, list[int]] = {}
        self.intervals: dict[str, list[float]] = {}
        self.seconds: dict[str, float] = {}
        self.output: dict[str, list[str]] = {}

    def add(self, key: str, correct: int, n: int, procedure: str) -> None:
        self.metrics[key] = correct / n if n else 0.0
        self.counts[key] = [int(correct), int(n)]
        self.intervals[key] = list(clopper_pearson(int(correct), int(n)))
        self.procedures[key] = procedure

    def add_flags(self, key: str, flags: torch.Tensor, procedure: str) -> None:
        self.add(key, int(flags.sum()), int(flags.numel()), procedure)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class _Said:
    lines: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _captured() -> Iterator[_Said]:
    """What an attack's library says while it runs: its stdout, its ``warnings`` and its WARNING log
    records (pyautoattack logs "there are 27 points with zero gradient!"); kept for the report's checks
    instead of scrolling past in a worker's log. Around every attack alike: no attack is special-cased."""
    said, out, handler = _Said(), io.StringIO(), _Lines()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
    finally:
        root.removeHandler(handler)
        said.lines += [line.strip() for line in out.getvalue().splitlines() if line.strip()]
        said.lines += [str(w.message) for w in caught] + handler.lines


@dataclass
class _Sample:
    """A seeded class-stratified sample of the test split, on the device, with the report's text for it.

    ``positions``: where its examples sit in the 'final' sample (None for the 'final' sample itself)."""

    name: str
    indices: np.ndarray
    x: torch.Tensor
    y: torch.Tensor
    on: str
    positions: torch.Tensor | None = None

    def of_final(self, flags: torch.Tensor) -> torch.Tensor:
        """``flags`` over the 'final' sample, restricted to this one."""
        return flags if self.positions is None else flags[self.positions]


def _draw_final(
    test_ds: Dataset, limit: int | None, seed: int, device: torch.device, samples: dict[str, Any]
) -> _Sample:
    """The 'final' sample (``evaluation.max_samples``), described in ``samples``."""
    full = len(test_ds)  # type: ignore[arg-type]
    indices = _sample_indices(test_ds, limit, seed)
    ds = Subset(test_ds, indices.tolist()) if len(indices) < full else test_ds
    samples["final"] = describe_sample(ds, full, seed)
    x, y = _tensors(ds)
    on = f"on the 'final' sample ({len(indices)} test samples)"
    return _Sample("final", indices, x.to(device), y.to(device), on)


def _draw_robust(test_ds: Dataset, limit: int | None, final: _Sample, seed: int, samples: dict[str, Any]) -> _Sample:
    """The 'robust' sample (``evaluation.autoattack_max_samples``) nested in the 'final' one, where the
    slow attacks run and the headline worst case is counted, described in ``samples``."""
    full = len(test_ds)  # type: ignore[arg-type]
    indices = _sample_indices(test_ds, min(limit or full, len(final.indices)), seed)
    positions = torch.as_tensor(np.searchsorted(final.indices, indices), device=final.x.device)
    ds = Subset(test_ds, indices.tolist()) if len(indices) < full else test_ds
    samples["robust"] = describe_sample(ds, full, seed)
    nested = len(indices) < len(final.indices)
    on = f"on the 'robust' sample ({len(indices)} test samples, nested in the 'final' one)" if nested else final.on
    return _Sample("robust", indices, final.x[positions], final.y[positions], on, positions)


def _attack_settings(spec: JobSpec, seed: int, num_classes: int) -> AttackSettings:
    ball = attack_settings(spec)
    return AttackSettings(
        norm=ball["norm"],
        eps=ball["eps"],
        step_size=ball["step_size"],
        seed=seed,
        batch_size=spec.dataset.test_batch_size,
        num_classes=num_classes,
        evaluation=spec.evaluation,
    )


class _WorstCase:
    """Per example of the headline sample: correct clean and under every attack so far (``robust_acc``),
    and under every member of each group so far (``autoattack_acc``); and each attack's accuracy there
    (what the gradient-masking check compares)."""

    def __init__(self, headline: _Sample, clean: torch.Tensor) -> None:
        self.headline = headline
        self.clean = headline.of_final(clean)
        self.flags = self.clean.clone()
        self.groups: dict[str, torch.Tensor] = {}
        self.accuracies: dict[str, float] = {}

    def add(self, attack: Attack, sample: _Sample, flags: torch.Tensor) -> None:
        on_headline = flags if sample is self.headline else self.headline.of_final(flags)
        self.accuracies[attack.name] = float(on_headline.float().mean())
        self.flags &= on_headline
        if attack.group is not None:
            self.groups[attack.group.name] = self.groups.get(attack.group.name, self.clean) & on_headline


def _run_attacks(
    model: nn.Module,
    test_ds: Dataset,
    final: _Sample,
    clean: torch.Tensor,
    settings: AttackSettings,
    tally: _Tally,
    samples: dict[str, Any],
    should_stop: ShouldStop,
    shard: Shard,
) -> dict[str, Any]:
    """Run every planned attack alone over its sample (``shard``: this rank's block of it, gathered); tally each, each group (``autoattack_acc``) after
    its last member, and the per-example worst case ``robust_acc`` on the headline sample (the 'robust'
    one when an attack runs there). Returns the checks (``gradient_masking`` when a gradient-free attack
    ran)."""
    attacks = planned_attacks(settings)
    robust = None
    if any(attack.sample == "robust" for attack in attacks):
        robust = _draw_robust(test_ds, settings.evaluation.autoattack_max_samples, final, settings.seed, samples)
    headline = robust or final
    worst = _WorstCase(headline, clean)
    last_of_group = {attack.group.name: attack.name for attack in attacks if attack.group is not None}
    torch.manual_seed(settings.seed)  # once: the attacks' order fixes what each draws (Attack.order)
    for attack in attacks:
        stop_if_asked(should_stop, f"before {attack.label(settings)}")
        sample = robust if attack.sample == "robust" and robust is not None else final
        started = time.monotonic()
        with _captured() as said:
            flags = _sharded_attack(model, attack, sample, sample.of_final(clean), settings, should_stop, shard)
        tally.seconds[attack.name] = time.monotonic() - started
        tally.output[attack.name] = sum(shard.gather(said.lines), [])
        tally.add_flags(attack.metric, flags, attack.procedure(settings, sample.on))
        worst.add(attack, sample, flags)
        group = attack.group
        if group is not None and last_of_group[group.name] == attack.name:
            tally.add_flags(group.metric, worst.groups[group.name], group.procedure(settings, headline.on))
    labels = ", ".join(attack.label(settings) for attack in attacks)
    procedure = (
        f"per-example worst case over {labels} ({settings.ball}): an example counts only if it "
        f"is classified correctly clean and under every attack, {headline.on}"
    )
    tally.add_flags("robust_acc", worst.flags, procedure)
    if any(attack.gradient_free for attack in attacks):
        return {"gradient_masking": masking_check(worst.accuracies)}
    return {}


def _sharded_attack(
    model: nn.Module,
    attack: Attack,
    sample: _Sample,
    clean: torch.Tensor,
    settings: AttackSettings,
    should_stop: ShouldStop,
    shard: Shard,
) -> torch.Tensor:
    """``attack.run`` over this rank's block of the examples it attacks, gathered (module docstring)."""
    work = torch.nonzero(clean).view(-1) if attack.attacks == "clean" else torch.arange(len(clean))
    work = work.to(sample.x.device)

    def run(pos: torch.Tensor | slice) -> torch.Tensor:
        return attack.run(model, sample.x[pos], sample.y[pos], settings, clean=clean[pos], should_stop=should_stop)

    def skip(pos: torch.Tensor | slice) -> None:
        attack.skip(sample.x[pos], settings)

    return _sharded(shard, work, len(clean), settings.batch_size, run, skip)


def _certify(
    model: nn.Module,
    objective: Objective,
    test_ds: Dataset,
    spec: JobSpec,
    device: torch.device,
    tally: _Tally,
    samples: dict[str, Any],
    should_stop: ShouldStop,
    shard: Shard,
) -> dict[str, Any]:
    """The objective's certificate on the 'certified' sample (``shard``: this rank's block, gathered); its fractions tallied with intervals.
    Every forward pass of the network inside asks ``should_stop`` (a noise batch of CERTIFY, a batch of
    the bounds)."""
    ev = spec.evaluation
    seed = sample_seed(spec)
    full = len(test_ds)  # type: ignore[arg-type]
    stop_if_asked(should_stop, "before the certification")
    cert_idx = _sample_indices(test_ds, ev.certify_max_samples, seed)
    cert_ds = Subset(test_ds, cert_idx.tolist()) if len(cert_idx) < full else test_ds
    samples["certified"] = describe_sample(cert_ds, full, seed)
    xc, yc = _tensors(cert_ds)
    xc, yc = xc.to(device), yc.to(device)
    with stop_checked_forward(model, should_stop, "in the certification"):
        start, stop = shard.block(len(yc), objective.certificate_batch(ev))
        examples = objective.certify_examples(model, xc, yc, ev, seed, start, stop)
        assert examples is not None
        if shard.size > 1:  # every rank's block, back on the device each result was made on
            parts = shard.gather({key: value.cpu() for key, value in examples.items()})
            examples = {
                key: torch.cat([part[key] for part in parts]).to(value.device) for key, value in examples.items()
            }
        cert = objective.summarize_certificate(examples, yc, ev, seed)
    assert cert is not None
    procedures = cert.pop("procedures", {}) if isinstance(cert.get("procedures"), dict) else {}
    n_cert = len(cert_idx)
    for key, value in cert.items():
        if not isinstance(value, (int, float)):
            continue
        if key in procedures:  # a fraction of the certified sample: count and interval
            tally.add(key, int(round(float(value) * n_cert)), n_cert, f"{procedures[key]} (the 'certified' sample)")
        else:
            tally.metrics[key] = float(value)
    return cert


def evaluate_variant(
    model: nn.Module,
    test_ds: Dataset,
    spec: JobSpec,
    device: torch.device,
    num_classes: int | None = None,
    should_cancel: Callable[[], bool] | None = None,
    attack_log: dict[str, Any] | None = None,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Final evaluation of one network: metrics, the procedure, sample and interval of each.

    ``shard``: this process is one rank of a sharded evaluation (module docstring); every rank calls
    this with the same network and returns the same result.

    ``attack_log``, when given, receives each attack's wall seconds (``seconds``) and what its library
    printed, logged or warned (``output``): the run's report records them, the result itself does not.

    Benign accuracy on the 'final' sample; when the objective is attacked, every registered attack that
    applies (``core.robust.suite``) and their per-example worst case; when it certifies, its
    certificate. ``should_cancel`` (the run's callback, True also on shutdown) is asked between the
    attacks and inside each of them at least once per batch, and on every forward pass of the
    certification, so a cancel or SIGTERM stops the evaluation with :class:`RunCanceled` within
    seconds."""
    should_stop = should_cancel or never_stop
    seed = sample_seed(spec)
    samples: dict[str, Any] = {}
    final = _draw_final(test_ds, spec.evaluation.max_samples, seed, device, samples)
    objective = build_objective(spec.objective)
    tally = _Tally()
    checks: dict[str, Any] = {}
    result: dict[str, Any] = {"samples": samples, "checks": checks, "n_test": len(final.indices)}
    result["interval_method"] = INTERVAL_METHOD
    was_training = model.training
    model.eval()
    try:
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(model(final.x[:1]).shape[1])
        batch = spec.dataset.test_batch_size
        shard = shard or Shard.whole()
        every = torch.arange(len(final.y), device=final.y.device)
        clean = _sharded(
            shard, every, len(every), batch, lambda pos: clean_flags(model, final.x[pos], final.y[pos], batch)
        )
        tally.add_flags("benign_acc", clean, f"top-1 accuracy {final.on}")
        if objective.attacked:
            settings = _attack_settings(spec, seed, num_classes)
            checks.update(_run_attacks(model, test_ds, final, clean, settings, tally, samples, should_stop, shard))
        if objective.certifies:
            result["certification"] = _certify(
                model, objective, test_ds, spec, device, tally, samples, should_stop, shard
            )
            _soundness_check(tally.metrics, checks)
    finally:
        model.train(was_training)
    result.update(metrics=tally.metrics, procedures=tally.procedures, counts=tally.counts, intervals=tally.intervals)
    if attack_log is not None:
        attack_log.update(seconds=tally.seconds, output=tally.output)
    return result


def _soundness_check(metrics: dict[str, float], checks: dict[str, Any]) -> None:
    """A certificate can never exceed what an attack leaves standing (on comparable samples)."""
    empirical = metrics.get("robust_acc")
    verified = {k: v for k, v in metrics.items() if k.startswith("verified_acc")}
    if empirical is None or not verified:
        return
    worst = max(verified, key=verified.__getitem__)
    checks["certificate_below_attack"] = {
        "ok": bool(verified[worst] <= empirical + MASKING_MARGIN),
        "verified": verified[worst],
        "empirical_robust": empirical,
        "metric": worst,
        "rule": "a verified accuracy above the empirical robust accuracy (beyond sampling noise) would "
        "mean an unsound bound or a broken attack",
    }


def sparsity_from_export(path: Path, masked_names: list[str]) -> dict[str, Any]:
    """Per-layer and total sparsity counted from the tensors stored in a compressed artifact,
    not from the spec: what a user downloads is what is measured."""
    from core.io.export import load_compressed

    state, _meta = load_compressed(path)
    wanted = set(masked_names)
    layers: dict[str, dict[str, float]] = {}
    zeros = total = 0
    for key, tensor in state.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is None or (layer not in wanted and f"net.{layer}" not in wanted):
            continue
        n = tensor.numel()
        nnz = int(torch.count_nonzero(tensor))
        layers[layer] = {"n": n, "nnz": nnz, "sparsity": 1 - nnz / n}
        zeros += n - nnz
        total += n
    return {"total": zeros / max(1, total), "prunable_params": total, "kept_params": total - zeros, "layers": layers}


def sparsity_from_channel_export(path: Path, full_sizes: dict[str, int]) -> dict[str, Any]:
    """:func:`sparsity_from_export` for a channel artifact: the stored (rebuilt, smaller) conv/linear
    weights counted against the full-width layers ``full_sizes`` (masked layer name -> weights), so a
    removed channel counts as pruned; ``stored_params`` is what the smaller file holds."""
    from core.io.export_channel import read_channel_pruned

    tensors, _meta, _widths, _shape = read_channel_pruned(path)
    layers: dict[str, dict[str, float]] = {}
    zeros = total = stored = 0
    for key, tensor in tensors.items():
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        if layer is None or layer not in full_sizes:
            continue
        n = full_sizes[layer]
        nnz = int(torch.count_nonzero(tensor))
        name = layer.removeprefix("net.")  # as sparsity_from_export names them
        layers[name] = {"n": n, "nnz": nnz, "sparsity": 1 - nnz / n, "stored": tensor.numel()}
        zeros += n - nnz
        total += n
        stored += tensor.numel()
    return {
        "total": zeros / max(1, total),
        "prunable_params": total,
        "kept_params": total - zeros,
        "stored_params": stored,
        "layers": layers,
    }
