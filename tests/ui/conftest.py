"""Fixtures for the dashboard tests: the app on a fresh SQLite database (page and helper tests), and
for the browser test the real embedded service (``hydra-service serve``) with headless Chromium
driven by Selenium (Debian's ``chromium`` + ``chromium-driver``; scripts/setup.sh installs them).

Screenshots go to ``$HYDRA_TEST_ARTIFACTS/ui`` (default ``/tmp/hydra-test-artifacts/ui``)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

from service.db import keys  # noqa: E402
from service.db.session import session_scope  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.client.embedded_service import EmbeddedService  # noqa: E402
from tests.service.svc_helpers import RecordingQueue, build_app, migrate  # noqa: E402
from tests.ui.ui_helpers import artifacts_dir  # noqa: E402


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    url = f"sqlite:///{tmp_path / 'hydra.db'}"
    migrate(url)
    return Settings(
        database_url=url,
        broker_url="memory://",
        storage_dir=str(tmp_path / "objects"),
        work_dir=str(tmp_path / "work"),
        rate_limit_per_minute=0,
    )


@pytest.fixture
def ui_app(sqlite_settings: Settings) -> Any:
    return build_app(sqlite_settings, RecordingQueue())


@pytest.fixture
def token(sqlite_settings: Settings) -> str:
    with session_scope(sqlite_settings) as s:
        _, secret = keys.create_api_key(s, f"ui-{uuid.uuid4().hex[:6]}", "test")
    return secret


def find_chromium() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None
    )
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedService]:
    svc = EmbeddedService(tmp_path_factory.mktemp("ui-service")).start()
    try:
        yield svc
    finally:
        svc.stop()
        (artifacts_dir() / "service.log").write_text(svc.logs())


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    found = find_chromium()
    if found is None:
        pytest.skip(
            "no headless Chromium: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver; scripts/setup.sh does it)"
        )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=found[1]), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
