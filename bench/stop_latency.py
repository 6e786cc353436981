"""How long a stop (cancel or SIGTERM) takes to end the final evaluation, per stage (issue 16, item 7).

    PYTHONPATH=. python bench/stop_latency.py

Runs the scenarios of ``tests/core/pipeline/test_evaluation_stop.py`` (a tiny network that sleeps 2 ms per forward
pass, each stage configured to run for minutes, the stop requested from a timer thread after 0.5 s)
and prints, per stage, the seconds from the request to ``RunCanceled``. Last line JSON.
"""

from __future__ import annotations

import json

from tests.core.pipeline.test_evaluation_stop import PGD, stop_after, without


def main() -> None:
    quick_pgd = {"pgd_steps": 1, "pgd_smooth_relu": False, "autoattack_max_samples": 64}
    stages = {
        "pgd": ((), PGD, {"pgd_steps": 10_000, "autoattack": False, "pgd_smooth_relu": False}, 64),
        "pgd_smooth": (("pgd",), PGD, {"pgd_steps": 10_000, "autoattack": False}, 64),
        "apgd-ce": ((), PGD, quick_pgd, 64),
        "apgd-t": (("apgd-ce",), PGD, quick_pgd, 64),
        "fab-t": (("apgd-ce", "apgd-t"), PGD, quick_pgd, 64),
        "square": (("apgd-ce", "apgd-t", "fab-t"), PGD, quick_pgd, 64),
        "smoothing CERTIFY": (
            (),
            {"type": "smoothing", "sigma": 0.25},
            {"smoothing": {"n0": 10, "n": 10_000_000, "batch_size": 64}, "certify_max_samples": 8},
            64,
        ),
        "IBP/CROWN-IBP bounds": (
            (),
            {"type": "crown_ibp", "eps": 0.02},
            {
                "autoattack": False,
                "pgd_smooth_relu": False,
                "pgd_steps": 1,
                "max_samples": 8,
                "bounds": {"batch_size": 1},
                "certify_max_samples": 400,
            },
            400,
        ),
    }
    latencies = {}
    for stage, (skipped, objective, evaluation, n) in stages.items():
        with without(*skipped):
            exc, latency = stop_after(0.5, objective, evaluation, n=n)
        latencies[stage] = round(latency, 4)
        print(f"{stage:22s} {1000 * latency:8.1f} ms   ({exc})")
    print(json.dumps({"stop_latency_s": latencies}))


if __name__ == "__main__":
    main()
