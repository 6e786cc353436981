"""A real Celery worker for the tests, with one test hook: ``HYDRA_TEST_BATCH_DELAY_S`` slows every
training batch down, so a test can act (kill, cancel, send a duplicate) in the middle of a tiny job.

Run as a script: ``python tests/worker/_worker_main.py <celery worker arguments>``.
"""

import os
import sys
import time


def main() -> None:
    delay = float(os.environ.get("HYDRA_TEST_BATCH_DELAY_S", "0") or 0)
    if delay > 0:
        from worker import runner

        original = runner.JobCallbacks.on_progress

        def slow_progress(self, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(delay)
            return original(self, **kwargs)

        runner.JobCallbacks.on_progress = slow_progress  # type: ignore[method-assign]
    from worker.celery_app import app

    app.worker_main(["worker", *sys.argv[1:]])


if __name__ == "__main__":
    main()
