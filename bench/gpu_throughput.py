"""Training throughput of the pipeline's steps under the spec's ``resources``, as ratios in one process.

For each architecture (VGG16-BN, ResNet-18 at CIFAR shape) and each configuration — ``fp32``, ``bf16``,
``bf16`` + channels-last (``bf16_cl``), and that + ``torch.compile`` (``bf16_cl_compile``) — times, on
random CIFAR-shaped data, the pipeline's three training steps through ``core.pipeline.training.train_step``
with TRADES (l_inf 8/255, ``--attack-steps`` steps, 10 as in the paper):

* ``pretrain`` — the dense network, SGD on the weights;
* ``prune`` — the masked network at k = 0.01, SGD on the scores, HYDRA's pruner as the step hook;
* ``finetune`` — the masked network with its mask final, SGD on the weights;

and a **lean dense loop** of the same configuration (``zero_grad``, the objective's loss under the same
autocast, ``backward``, ``step``: no hooks, no mask, no scaler or sync plumbing). Each step's figure is
images/s and its ratio to the lean loop (the pipeline's overhead; target prune ≤ 1.10× the lean step's
time, i.e. ``lean_ratio_prune`` ≥ 0.91); ``speedup_vs_fp32`` compares each configuration's lean loop with
fp32's (target on a GPU: bf16 + channels-last ≥ 1.8×). Steps are interleaved per iteration in a rotating
order; figures are medians of ``--steps`` timed iterations after 2 warm-ups (compilation happens there).

``--ddp`` adds data-parallel throughput of the pretrain step at world size 1 and 2 (gloo on CPU, NCCL on
CUDA when two GPUs exist): each rank runs half the global batch, gradients averaged by
``core.pipeline.resources.GradSync`` as in a job.

    python bench/gpu_throughput.py --device cpu --batch 8 --steps 2 --attack-steps 2 --json
    python bench/gpu_throughput.py --device cuda --json            # batch 128, 10 steps, TRADES-10

``--archs`` takes any architecture of the zoo with a 3x32x32 input. On the CPU, ``+ compile`` is timed in
a few minutes on the small certified-training CNN (inductor builds C++ kernels for each of the four
steps during the warm-ups; 85 s of them on one busy core, Dec 2026)::

    python bench/gpu_throughput.py --device cpu --archs cnn_small_cifar --configs fp32,bf16_cl,bf16_cl_compile \
        --batch 16 --steps 3 --attack-steps 2 --threads 1 --json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.zoo import create_model
from core.objectives.trades import TradesTraining
from core.pipeline.resources import CompiledForward, Precision, input_format, to_memory_format
from core.pipeline.training import train_step
from core.pruning.masked import convert_to_masked, set_stage
from core.pruning.methods import build_pruner
from core.spec import PruningSpec

WARMUP = 2
CONFIGS = {  # name: (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16_cl": ("bf16", True, False),
    "bf16_cl_compile": ("bf16", True, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(list(params), lr=lr, momentum=0.9, weight_decay=1e-4)


def build_steps(arch: str, device: torch.device, config: str, x: torch.Tensor, attack_steps: int) -> dict[str, Any]:
    """The four steps of one configuration, each a closure ``step(x, y)``."""
    precision_name, channels_last, compiled = CONFIGS[config]
    precision = Precision(precision_name, device)
    objective = TradesTraining(TradesTraining.Spec(steps=attack_steps))
    fallbacks: list[str] = []
    torch.manual_seed(0)
    dense = create_model(arch, num_classes=10).to(device).train()

    def prepare(net: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        to_memory_format(net, channels_last)
        return net, (CompiledForward(net, fallbacks.append) if compiled else None)

    lean_net, lean_fwd = prepare(copy.deepcopy(dense))
    lean_opt = _sgd(lean_net.parameters(), 0.1)
    lean_scaler = precision.scaler

    def lean(x: torch.Tensor, y: torch.Tensor) -> None:
        lean_opt.zero_grad(set_to_none=True)
        with precision.autocast():
            loss, _ = objective.loss(lean_fwd if lean_fwd is not None else lean_net, x, y)
        if lean_scaler is not None:
            lean_scaler.scale(loss).backward()
            lean_scaler.step(lean_opt)
            lean_scaler.update()
        else:
            loss.backward()
            lean_opt.step()

    pre_net, pre_fwd = prepare(copy.deepcopy(dense))
    pre_opt = _sgd(pre_net.parameters(), 0.1)

    def masked(stage: str) -> tuple[nn.Module, nn.Module | None, Any]:
        net = convert_to_masked(copy.deepcopy(dense)).to(device)
        pruner = build_pruner(PruningSpec(), "hydra", 0.01, net, x[:2])
        pruner.enter(net)
        if stage != "prune":
            pruner.finish(net)
        set_stage(net, stage)
        net, fwd = prepare(net)
        return net, fwd, pruner if stage == "prune" else None

    prune_net, prune_fwd, hook = masked("prune")
    prune_opt = _sgd([p for p in prune_net.parameters() if p.requires_grad], 0.1)
    fine_net, fine_fwd, _ = masked("finetune")
    fine_opt = _sgd([p for p in fine_net.parameters() if p.requires_grad], 0.01)

    def pipeline_step(net: nn.Module, fwd: nn.Module | None, opt: torch.optim.Optimizer, refresh: bool, h: Any) -> Any:
        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            train_step(net, objective, opt, x, y, refresh=refresh, hook=h, forward_model=fwd, precision=precision)

        return step

    return {
        "lean": lean,
        "pretrain": pipeline_step(pre_net, pre_fwd, pre_opt, False, None),
        "prune": pipeline_step(prune_net, prune_fwd, prune_opt, True, hook),
        "finetune": pipeline_step(fine_net, fine_fwd, fine_opt, False, None),
        "_fallbacks": fallbacks,
    }


def time_config(
    arch: str, device: torch.device, config: str, batch: int, steps: int, attack_steps: int
) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    x = input_format(x, CONFIGS[config][1])
    fns = build_steps(arch, device, config, x, attack_steps)
    fallbacks = fns.pop("_fallbacks")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    warm_s = 0.0
    for it in range(WARMUP + steps):
        order = names[it % len(names) :] + names[: it % len(names)]
        for name in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[name](x, y)
            _sync(device)
            dt = time.perf_counter() - t0
            if it >= WARMUP:
                times[name].append(dt)
            else:
                warm_s += dt
    med = {n: statistics.median(times[n]) for n in names}
    out: dict[str, Any] = {"warmup_s": round(warm_s, 2), "compile_fallbacks": fallbacks}
    for n in names:
        out[f"{n}_img_s"] = round(batch / med[n], 2)
    for n in ("pretrain", "prune", "finetune"):
        out[f"{n}_time_ratio"] = round(med[n] / med["lean"], 4)  # step time / lean dense step time
    return out


def _ddp_rank(rank: int, size: int, store: str, arch: str, batch: int, steps: int, attack_steps: int, q: Any) -> None:
    import datetime

    import torch.distributed as dist

    from core.pipeline.resources import GradSync

    torch.set_num_threads(1)
    if size > 1:
        dist.init_process_group(
            "gloo",
            store=dist.FileStore(store, size),
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(minutes=30),
        )
    device = torch.device("cpu")
    torch.manual_seed(0)
    net = create_model(arch, num_classes=10).train()
    opt = _sgd(net.parameters(), 0.1)
    objective = TradesTraining(TradesTraining.Spec(steps=attack_steps))
    sync = GradSync(size) if size > 1 else None
    g = torch.Generator().manual_seed(rank)
    per = batch // size
    x, y = torch.rand(per, 3, 32, 32, generator=g), torch.randint(0, 10, (per,), generator=g)
    times = []
    for it in range(WARMUP + steps):
        if sync is not None:
            dist.barrier()
        t0 = time.perf_counter()
        train_step(net, objective, opt, x, y, sync=sync, precision=Precision("fp32", device))
        if sync is not None:
            dist.barrier()
        if it >= WARMUP:
            times.append(time.perf_counter() - t0)
    if rank == 0:
        q.put(statistics.median(times))
    if size > 1:
        dist.destroy_process_group()


def ddp_throughput(arch: str, batch: int, steps: int, attack_steps: int) -> dict[str, Any]:
    """Global images/s of the pretrain step at world size 1 and 2 (one CPU thread per rank)."""
    import tempfile

    import torch.multiprocessing as tmp

    out: dict[str, Any] = {}
    ctx = tmp.get_context("forkserver")
    for size in (1, 2):
        q = ctx.Queue()
        store = tempfile.mkdtemp() + "/store"
        tmp.start_processes(
            _ddp_rank, args=(size, store, arch, batch, steps, attack_steps, q), nprocs=size, start_method="forkserver"
        )
        out[f"world{size}_img_s"] = round(batch / q.get(), 2)
    out["scaling_2_over_1"] = round(out["world2_img_s"] / out["world1_img_s"], 3)
    out["backend"] = "gloo"
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed iterations (after 2 warm-ups)")
    parser.add_argument("--attack-steps", type=int, default=10, help="TRADES attack steps (10: TRADES-10)")
    parser.add_argument("--archs", default="vgg16_bn,resnet18")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddp", action="store_true", help="also data-parallel throughput at world size 1 and 2")
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "attack_steps": args.attack_steps,
        "threads": args.threads,
        "archs": {},
    }
    for arch in args.archs.split(","):
        per: dict[str, Any] = {}
        for config in args.configs.split(","):
            per[config] = time_config(arch, device, config, args.batch, args.steps, args.attack_steps)
            print(f"{arch} {config}: {per[config]}", flush=True)
        if "fp32" in per:
            for figures in per.values():
                figures["speedup_vs_fp32"] = round(figures["lean_img_s"] / per["fp32"]["lean_img_s"], 3)
        result["archs"][arch] = per
        if args.ddp and device.type == "cpu":
            per["ddp"] = ddp_throughput(arch, args.batch, args.steps, args.attack_steps)
            print(f"{arch} ddp: {per['ddp']}", flush=True)
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
