"""Why does PGD overstate a pruned network's robustness? Diagnose one exported network.

    python bench/masking_diagnosis.py runs/x/hydra_k0.01.compressed.safetensors --eps 0.1 --step 0.02

Prints, on the mnist5k test split (stratified sample): the share of examples whose cross-entropy input
gradient is exactly zero (float32 saturation or dead ReLUs), the logit-margin distribution, the
share of dead hidden units, and robust accuracy under PGD with cross-entropy vs. the margin (CW)
loss vs. Square — so the cause is a measurement, not a guess. Last line JSON.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from core.data.datasets import build_datasets
from core.data.sampling import stratified_subset
from core.io.export import load_compressed_model
from core.robust.attacks import pgd
from core.robust.suite import autoattack_flags, clean_flags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--step", type=float, default=0.02)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samples", type=int, default=500)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_compressed_model(args.artifact).eval()
    _, test, _ = build_datasets({"name": "mnist5k"}, 0)
    ds = stratified_subset(test, args.samples, 0)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    x.requires_grad_(True)
    logits = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
    zero_grad = (g.flatten(1).abs().sum(1) == 0).float().mean().item()
    top2 = logits.detach().topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    x = x.detach()
    # dead units: hidden ReLU outputs that are zero on every test input
    acts: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: acts.append(o.detach()))
        for m in model.modules()
        if isinstance(m, torch.nn.ReLU)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    dead = [float((a.flatten(2).amax(2) if a.dim() == 4 else a).amax(0).le(0).float().mean()) for a in acts]
    clean = clean_flags(model, x, y, 256)
    res = {
        "clean": float(clean.float().mean()),
        "zero_ce_grad_share": zero_grad,
        "margin_median": float(margin.median()),
        "margin_p90": float(margin.quantile(0.9)),
        "dead_units_per_relu": dead,
    }
    for loss in ("ce",):
        adv = pgd(model, x, y, eps=args.eps, step_size=args.step, steps=args.steps, loss=loss)
        res[f"pgd_{loss}"] = float((model(adv).argmax(1) == y).float().mean())
    # margin (CW) loss PGD, written here: scale-invariant in sign steps, no softmax saturation
    xa = (x + torch.empty_like(x).uniform_(-args.eps, args.eps)).clamp(0, 1)
    for _ in range(args.steps):
        xa.requires_grad_(True)
        z = model(xa)
        other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), -1e9).amax(1)
        (gg,) = torch.autograd.grad((other - z.gather(1, y[:, None])[:, 0]).sum(), xa)
        xa = torch.min(torch.max(xa.detach() + args.step * gg.sign(), x - args.eps), x + args.eps).clamp(0, 1)
    res["pgd_margin"] = float((model(xa).argmax(1) == y).float().mean())
    from core.robust.attacks import smooth_relu_backward

    for tau in (0.03, 0.1, 0.3):
        with smooth_relu_backward(model, tau):
            adv = pgd(model, x, y, eps=args.eps, step_size=args.step, steps=args.steps, loss="ce", restarts=2)
        res[f"pgd_ce_smooth_relu_tau{tau}"] = float((model(adv).argmax(1) == y).float().mean())
    aa, _ = autoattack_flags(model, x, y, clean, norm="linf", eps=args.eps, num_classes=10, seed=0, batch_size=256)
    res.update({k: float(v.float().mean()) for k, v in aa.items()})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
