"""How long an open event stream (SSE) outlives the revocation of its key, with the default
``auth_cache_seconds`` (5 s: "a revoked key stops working within this time").

For each round: a fresh key with a queued job (a job that never ends, so its stream would stay open),
a stream opened on the API served by uvicorn (embedded default: SQLite), a random wait of 0 to 5 s so
the revocation falls anywhere between two key checks, ``revoke_keys`` as ``hydra-service revoke-key``
does it, then the time until the server closes the stream. Prints one JSON line:
``{"promise_s", "rounds", "closed_s": {"min", "median", "max"}, "within_promise"}``.

Usage: ``python bench/stream_revocation.py [--rounds 10]`` (target: max < promise_s).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.main import create_app
from migrations import upgrade
from service.db import jobs, keys
from service.db.session import session_scope
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'hydra.db'}"
        upgrade(url)
        settings = Settings(database_url=url, broker_url="memory://", storage_dir=f"{tmp}/o", work_dir=f"{tmp}/w")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        closed: list[float] = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(10, read=30)) as client:
                for i in range(args.rounds):
                    with session_scope(settings) as s:
                        key, token = keys.create_api_key(s, f"bench-{i}", "bench")
                        job, _ = jobs.create_job(s, key.tenant_id, {"name": "never-ends"})
                        prefix, job_id = key.prefix, job.id
                    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
                    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
                        lines = stream.iter_lines()
                        next(lines)
                        time.sleep(random.uniform(0, settings.auth_cache_seconds))
                        with session_scope(settings) as s:
                            keys.revoke_keys(s, prefix)
                        revoked = time.monotonic()
                        for _ in lines:
                            pass
                        closed.append(time.monotonic() - revoked)
        finally:
            server.should_exit = True
            thread.join(timeout=15)
    print(
        json.dumps(
            {
                "promise_s": settings.auth_cache_seconds,
                "rounds": len(closed),
                "closed_s": {
                    "min": round(min(closed), 3),
                    "median": round(statistics.median(closed), 3),
                    "max": round(max(closed), 3),
                },
                "within_promise": max(closed) < settings.auth_cache_seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
