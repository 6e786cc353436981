"""What does a HYDRA step cost next to a dense robust-training step?

Times, in one process on CIFAR-shaped random data, (a) a prune step (masked net at k = 0.01, only
scores train, TRADES l_inf 8/255 with 10 attack steps, SGD on the scores, then ``refresh_masks``),
(b) the same TRADES step on the plain dense architecture (SGD on the weights) and (c) a finetune step
(masked, k = 0.01, scores frozen). All three use ``core.pipeline.training.train_step`` with the same objective,
so the difference is the mask alone. The variants are interleaved per iteration (in a rotating order)
to cancel machine noise; each figure is the median of ``--steps`` timed iterations after 2 warm-ups.

``--allocation global|learned`` and ``--granularity channel`` time the prune step of those modes instead
(the runner's own pruner, ``core.pruning.methods.build_pruner``, as the step hook: global top-k after the
step; learned penalty, rate gradient, rate step and refresh; channel probe reduction and channel
refresh, with the channel scores and BatchNorm as the optimizer's parameters), against the same lean
dense TRADES step. ``--k`` is the keep fraction (of weights, or of channels per group at channel
granularity). ``--budget macs`` (channel granularity) makes ``k`` the fraction of MACs kept: uniform keeps
the one channel fraction of those MACs, ``--allocation learned`` trains per-group rates under the MAC
hinge (``core.pruning.channel_budget``). ``--sharpness RHO`` wraps the pruner in the sharpness-aware
score step (``pruning.score_sharpness: {rho: RHO}``, ``core.pruning.sharpness``): one extra
forward/backward of the objective per step, so its target is at most 2.2x the dense step.

    python bench/prune_step.py --arch resnet18 --batch-size 32 --steps 10 --json
    python bench/prune_step.py --arch resnet18 --allocation learned --steps 10 --json
    python bench/prune_step.py --arch resnet18 --granularity channel --k 0.5 --steps 10 --json
    python bench/prune_step.py --arch resnet18 --sharpness 0.1 --steps 10 --json
    python bench/prune_step.py --arch resnet18 --granularity channel --allocation learned --budget macs --k 0.5 --json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.models.zoo import create_model
from core.objectives.trades import TradesTraining as TradesObjective
from core.pipeline.training import train_step
from core.pruning.masked import convert_to_masked, set_stage
from core.pruning.methods import build_pruner
from core.pruning.pruner import Pruner
from core.spec import PruningSpec

WARMUP = 2
K = 0.01
Variant = tuple[torch.nn.Module, torch.optim.Optimizer, bool, Pruner | None]


def build(
    arch: str,
    seed: int,
    k: float = K,
    allocation: str = "uniform",
    granularity: str = "unstructured",
    example: torch.Tensor | None = None,
    budget: str = "params",
    sharpness: float | None = None,
) -> dict[str, Variant]:
    torch.manual_seed(seed)
    dense = create_model(arch, num_classes=10)
    dense.train()
    options = PruningSpec(
        allocation=allocation,  # type: ignore[arg-type]
        granularity=granularity,  # type: ignore[arg-type]
        budget=budget,  # type: ignore[arg-type]
        score_sharpness=None if sharpness is None else {"rho": sharpness},  # type: ignore[arg-type]
    )

    def masked(stage: str) -> tuple[torch.nn.Module, Pruner | None]:
        net = convert_to_masked(copy.deepcopy(dense))
        assert example is not None
        pruner: Pruner | None = build_pruner(options, "hydra", k, net, example)  # as the runner does
        assert pruner is not None
        pruner.enter(net)
        if stage != "prune":
            pruner.finish(net)
            pruner = None
        return set_stage(net, stage), pruner

    (prune, hook), (finetune, _) = masked("prune"), masked("finetune")

    def sgd(net: torch.nn.Module, lr: float, params: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
        params = params if params is not None else [p for p in net.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)

    prune_params = hook.optimizer_parameters(prune) if hook is not None else None
    return {
        "prune": (prune, sgd(prune, 0.1, prune_params), True, hook),
        "dense": (dense, sgd(dense, 0.1), False, None),
        "finetune": (finetune, sgd(finetune, 0.01), False, None),
    }


def main(argv: list[str] | None = None) -> dict[str, float | str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18", choices=["vgg16_bn", "wrn_28_4", "resnet18", "cnn_small_cifar"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed iterations (after 2 warm-ups)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=float, default=K, help="keep fraction (channels per group at channel granularity)")
    parser.add_argument("--allocation", default="uniform", choices=["uniform", "global", "learned"])
    parser.add_argument("--granularity", default="unstructured", choices=["unstructured", "channel"])
    parser.add_argument("--budget", default="params", choices=["params", "macs"], help="macs: channel granularity")
    parser.add_argument("--sharpness", type=float, default=None, metavar="RHO", help="score_sharpness rho")
    parser.add_argument("--json", action="store_true", help="print a JSON line last")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    objective = TradesObjective()  # l_inf 8/255, step 2/255, 10 steps, beta 6
    g = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    variants = build(
        args.arch, args.seed, args.k, args.allocation, args.granularity, x[:2], args.budget, args.sharpness
    )

    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for it in range(WARMUP + args.steps):
        order = names[it % 3 :] + names[: it % 3]  # rotate: no variant always runs first
        for name in order:
            model, opt, refresh, hook = variants[name]
            if hook is not None:
                hook.set_progress(it / (WARMUP + args.steps))
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(model, objective, opt, x, y, refresh=refresh, hook=hook)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if it >= WARMUP:
                times[name].append(dt)
                cpu[name].append(dc)
        if it >= WARMUP:
            print(
                f"iter {it - WARMUP + 1}/{args.steps}: "
                + ", ".join(f"{n} {times[n][-1]:.3f}s (cpu {cpu[n][-1]:.3f}s)" for n in names),
                flush=True,
            )

    med = {n: statistics.median(times[n]) for n in names}
    med_cpu = {n: statistics.median(cpu[n]) for n in names}
    result: dict[str, float | str] = {
        "arch": args.arch,
        "allocation": args.allocation,
        "granularity": args.granularity,
        "budget": args.budget,
        "sharpness": args.sharpness if args.sharpness is not None else "off",
        "k": args.k,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "prune_s": round(med["prune"], 4),
        "dense_s": round(med["dense"], 4),
        "finetune_s": round(med["finetune"], 4),
        "ratio": round(med["prune"] / med["dense"], 4),
        "finetune_ratio": round(med["finetune"] / med["dense"], 4),
        # process CPU time: the robust figure when other jobs share the cores
        "ratio_cpu": round(med_cpu["prune"] / med_cpu["dense"], 4),
        # fastest iteration of each: noise from other jobs only ever adds time
        "ratio_min": round(min(times["prune"]) / min(times["dense"]), 4),
        "finetune_ratio_min": round(min(times["finetune"]) / min(times["dense"]), 4),
        "finetune_ratio_cpu": round(med_cpu["finetune"] / med_cpu["dense"], 4),
    }
    print(
        f"{args.arch} batch {args.batch_size}, TRADES linf 8/255 x10, k={args.k}, {args.allocation} allocation, "
        f"{args.granularity}, budget {args.budget}, sharpness {args.sharpness}, {args.threads} threads, "
        f"median of {args.steps}:"
    )
    print(f"  prune step    {med['prune']:.3f}s  ({result['ratio']:.3f}x dense; cpu {result['ratio_cpu']:.3f}x)")
    print(f"  dense step    {med['dense']:.3f}s")
    print(
        f"  finetune step {med['finetune']:.3f}s  ({result['finetune_ratio']:.3f}x dense; "
        f"cpu {result['finetune_ratio_cpu']:.3f}x)"
    )
    print(
        f"  fastest iterations: prune {min(times['prune']):.3f}s, dense {min(times['dense']):.3f}s, "
        f"finetune {min(times['finetune']):.3f}s ({result['ratio_min']:.3f}x, {result['finetune_ratio_min']:.3f}x)"
    )
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
