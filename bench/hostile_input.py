"""Hostile input against the API, in process: status, time and peak-memory growth of each request.

For the closing note of issue 16 (items 1, 3 and 6). Builds the real app on the embedded default (a
SQLite file in a temp folder, the broker replaced by a no-op), creates a key, then sends each hostile
request once through Starlette's TestClient and prints one row per request: what was sent, its size,
the status and error code/field, the wall time, and how much this process's *peak* RSS grew during it
(VmHWM, reset before each request through /proc/self/clear_refs, Linux; read from /proc/self/status).

Run against any checkout (its code first on the path), e.g. the unchanged main for "before":
    PYTHONPATH=/work/main python bench/hostile_input.py --bomb-levels 6
    PYTHONPATH=$PWD python bench/hostile_input.py              # 9 levels: 10**9 nodes once expanded
``--json`` prints the rows as one JSON list instead. Keep ``--bomb-levels`` small on code that expands
aliases: the cost grows tenfold per level (the issue measured 60 s and +2.75 GB at 7 levels).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def alias_bomb(levels: int, fanout: int = 10) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def _kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def cases(levels: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(item, label, request kwargs for client.request)."""
    deep_kwargs = '{"a": ' * 1000 + "1" + "}" * 1000
    quick = '"stages": {"pretrain": {"epochs": 1, "lr": 0.1}}'
    json_h = {"content-type": "application/json"}
    spec = json.dumps({"stages": {"pretrain": {"epochs": 1, "lr": 0.1}}})[:-1]
    out: list[tuple[str, str, dict[str, Any]]] = [
        (
            "1",
            f"spec-parse: YAML alias bomb, {levels} levels x 10 (10^{levels} nodes expanded)",
            {"method": "POST", "url": "/ui/api/spec-parse", "json": {"text": alias_bomb(levels)}},
        ),
        (
            "3",
            "POST /v1/jobs: model.kwargs nested 1000 deep",
            {
                "method": "POST",
                "url": "/v1/jobs",
                "content": "{" + quick + ', "model": {"kwargs": ' + deep_kwargs + "}}",
                "headers": json_h,
            },
        ),
        (
            "3",
            "POST /v1/models: kwargs form part nested 1000 deep",
            {
                "method": "POST",
                "url": "/v1/models",
                "data": {"arch": "cnn_small_mnist", "kwargs": deep_kwargs},
                "files": {"file": ("w.safetensors", b"\0" * 16)},
            },
        ),
        (
            "3",
            "spec-parse: JSON text nested 5000 deep",
            {
                "method": "POST",
                "url": "/ui/api/spec-parse",
                "json": {"text": "[" * 5000 + "]" * 5000, "format": "json"},
            },
        ),
        (
            "3",
            "spec-parse: YAML text nested 5000 deep",
            {"method": "POST", "url": "/ui/api/spec-parse", "json": {"text": "a: " + "[" * 5000 + "]" * 5000}},
        ),
        (
            "6",
            "POST /v1/jobs: seed = a 5000-digit integer",
            {
                "method": "POST",
                "url": "/v1/jobs",
                "content": '{"seed": ' + "9" * 5000 + ", " + quick + "}",
                "headers": json_h,
            },
        ),
    ]
    for label, extra in [
        ("objective.eps: 1e9", '"objective": {"type": "pgd", "eps": 1e9}'),
        ("pruning.k: [1e-300]", '"pruning": {"k": [1e-300]}'),
        ("dataset.num_workers: 64", '"dataset": {"num_workers": 64}'),
        ('device: "cuda:999"', '"device": "cuda:999"'),
        ("dataset.download: true", '"dataset": {"download": true}'),
    ]:
        out.append(
            (
                "6",
                f"POST /v1/jobs: {label}",
                {"method": "POST", "url": "/v1/jobs", "content": spec + ", " + extra + "}", "headers": json_h},
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bomb-levels", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from api.deps import get_job_queue
    from api.main import create_app
    from migrations import alembic_config
    from service.db import keys
    from service.db.session import session_scope
    from service.settings import Settings

    class NoQueue:
        def enqueue(self, job_id: str) -> bool:
            return True

    folder = Path(tempfile.mkdtemp(prefix="hostile-"))
    url = f"sqlite:///{folder / 'hydra.db'}"
    from alembic import command

    cfg = alembic_config(url)
    cfg.attributes["configure_logging"] = False
    command.upgrade(cfg, "head")
    settings = Settings(
        database_url=url,
        broker_url="memory://",
        storage_dir=str(folder / "objects"),
        work_dir=str(folder / "work"),
        rate_limit_per_minute=0,
        max_dataloader_workers=2,
    )
    app = create_app(settings)
    app.dependency_overrides[get_job_queue] = lambda: NoQueue()
    with session_scope(settings) as session:
        _, token = keys.create_api_key(session, "hostile", "bench")
    headers = {"Authorization": f"Bearer {token}"}
    rows = []
    with TestClient(app, raise_server_exceptions=False) as client:
        client.post("/ui/api/spec-parse", json={"text": "a: 1"}, headers=headers)  # warm up
        client.post("/v1/jobs", json={"stages": {"pretrain": {"epochs": 1, "lr": 0.1}}}, headers=headers)
        for item, label, request in cases(args.bomb_levels):
            size = len(request.get("content") or json.dumps(request.get("json") or request.get("data")))
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
            extra = request.pop("headers", {})
            before = _kb("VmRSS")
            started = time.monotonic()
            response = client.request(**request, headers={**headers, **extra})
            elapsed = time.monotonic() - started
            try:
                body = response.json()
            except ValueError:
                body = {}
            rows.append(
                {
                    "item": item,
                    "request": label,
                    "body_bytes": size,
                    "status": response.status_code,
                    "error_code": body.get("error_code") if isinstance(body, dict) else None,
                    "field": body.get("field") if isinstance(body, dict) else None,
                    "response_bytes": len(response.content),
                    "seconds": round(elapsed, 3),
                    "peak_rss_growth_mb": round((_kb("VmHWM") - before) / 1024, 1),
                }
            )
    if args.json:
        print(json.dumps(rows))
        return
    print("| item | request | body bytes | status | error_code / field | time (s) | peak RSS growth (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['item']} | {r['request']} | {r['body_bytes']} | {r['status']} | "
            f"{r['error_code']} / {r['field']} | {r['seconds']} | {r['peak_rss_growth_mb']} |"
        )


if __name__ == "__main__":
    main()
