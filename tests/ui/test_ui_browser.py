"""The dashboard in a real headless browser (Chromium + Selenium) against the real embedded service:
enter the key, submit a spec with a mistake and see the error at its line, submit the tiny job, watch
it finish live, read the table, the curves, the plot and the per-layer sparsity, download an artifact
(sha256 checked), cancel another job, and open /docs. One screenshot per page goes to
``$HYDRA_TEST_ARTIFACTS/ui`` (default ``/tmp/hydra-test-artifacts/ui``)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hydra_client import Client
from tests.client.embedded_service import LONG_SPEC, TINY_SPEC, EmbeddedService
from tests.ui.ui_helpers import artifacts_dir

pytestmark = pytest.mark.slow


def wait_until(driver: Any, condition: Any, timeout: float = 30, what: str = "the page") -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # the page re-renders as events arrive: an element found a moment ago may be gone, try again
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.25,
            ignored_exceptions=(StaleElementReferenceException, NoSuchElementException),
        ).until(lambda d: condition(d))
    except TimeoutException:
        shot(driver, f"timeout-{int(time.time())}")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; console: {console(driver)}") from None


def shot(driver: Any, name: str) -> Path:
    """A screenshot of the whole page (the window is stretched to the page's height first)."""
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1400, min(max(int(height) + 120, 900), 6000))
    path = artifacts_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def console(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def same_origin_only(driver: Any, origin: str) -> None:
    names = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [n for n in names if not n.startswith(origin) and not n.startswith(("blob:", "data:"))]
    assert outside == [], outside


def set_editor(driver: Any, text: str) -> None:
    editor = by_id(driver, "spec-editor")
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", editor, text
    )


def test_dashboard_end_to_end(browser: Any, service: EmbeddedService, downloads: Path) -> None:
    driver, url = browser, service.url
    errors_seen: list[dict[str, Any]] = []

    # -- no key yet: the key form and nothing else
    driver.get(f"{url}/ui/jobs")
    wait_until(driver, lambda d: by_id(d, "need-key").is_displayed(), what="the key notice")
    assert not by_id(driver, "jobs-table").is_displayed()
    shot(driver, "01-key-form")
    by_id(driver, "api-key").send_keys("wrong-key")
    by_id(driver, "key-save").click()
    wait_until(driver, lambda d: "refused" in by_id(d, "flash").text, what="the refusal of a wrong key")
    by_id(driver, "api-key").send_keys(service.key)
    by_id(driver, "key-save").click()
    wait_until(
        driver,
        lambda d: (
            d.execute_script("return sessionStorage.getItem('hydra.apiKey')") == service.key
            and by_id(d, "jobs-table").is_displayed()
        ),
        what="the job list",
    )
    assert service.key not in driver.current_url

    # -- the submit page: prefilled from the catalogue; a mistake is shown at its line
    by_id(driver, "nav-submit").click()
    wait_until(driver, lambda d: "objective:" in by_id(d, "spec-editor").get_attribute("value"), what="the template")
    assert len(css(driver, "#choose-objective option")) >= 6
    assert by_id(driver, "choose-objective").get_attribute("value") == "trades"
    shot(driver, "02-submit-template")
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, "choose-objective")).select_by_value("smoothing")
    wait_until(
        driver, lambda d: "sigma:" in by_id(d, "spec-editor").get_attribute("value"), what="the smoothing defaults"
    )
    bad = yaml.safe_dump({**TINY_SPEC, "pruning": {"methods": ["hydra"], "k": [2.0]}}, sort_keys=False)
    set_editor(driver, bad)
    by_id(driver, "submit-button").click()
    error = wait_until(driver, lambda d: css(d, "#spec-error") and css(d, "#spec-error")[0], what="the spec error")
    k_line = next(i for i, line in enumerate(bad.splitlines(), 1) if line.strip().startswith("k:"))
    assert error.get_attribute("data-field") == "pruning.k" and error.get_attribute("data-line") == str(k_line)
    assert f"line {k_line}" in error.text and "pruning.k" in error.text
    assert [s.text for s in css(driver, "#editor-gutter .err")] == [str(k_line)]
    assert by_id(driver, "editor-marker").is_displayed() and "pruning.k" in by_id(driver, "editor-marker").text
    shot(driver, "03-submit-error-at-field")

    # -- the tiny job, submitted from the editor (JSON this time), followed live to its end
    Select(by_id(driver, "choose-format")).select_by_value("json")
    wait_until(
        driver,
        lambda d: by_id(d, "spec-editor").get_attribute("value").lstrip().startswith("{"),
        what="the JSON template",
    )
    set_editor(driver, json.dumps({**TINY_SPEC, "name": "from-the-browser"}, indent=2))
    by_id(driver, "submit-button").click()
    wait_until(driver, lambda d: "/ui/jobs/" in d.current_url, what="the job page")
    job_id = driver.current_url.rsplit("/", 1)[1]
    wait_until(driver, lambda d: by_id(d, "job-status").text in ("queued", "running", "succeeded"), what="the status")
    wait_until(driver, lambda d: css(d, "#events li"), what="live events")
    wait_until(driver, lambda d: css(d, "#curve-loss polyline"), timeout=120, what="the first epoch's curve")
    if by_id(driver, "job-status").text != "succeeded":
        assert not by_id(driver, "report-section").is_displayed()  # no report before the job succeeded
    shot(driver, "04-job-running")
    wait_until(
        driver,
        lambda d: by_id(d, "job-status").text in ("succeeded", "failed", "canceled"),
        timeout=240,
        what="the job to finish",
    )
    assert by_id(driver, "job-status").text == "succeeded", service.logs()[-3000:]
    wait_until(
        driver,
        lambda d: by_id(d, "report-section").is_displayed() and css(d, "#comparison-table tbody tr"),
        what="the report",
    )
    wait_until(driver, lambda d: css(d, "#artifacts-body tr[data-artifact]"), what="the artifacts")

    # the comparison, with the exact procedure of every number
    variants = [tr.get_attribute("data-variant") for tr in css(driver, "#comparison-table tbody tr")]
    assert variants == ["dense", "hydra_k0.1", "lwm_k0.1"]
    headers = [th.text for th in css(driver, "#comparison-table thead th")]
    assert "benign_acc % [95% CI]" in headers and any(h.startswith("robust_acc") for h in headers)
    report = Client(url, service.key).report(job_id)
    hydra_row = next(r for r in report["comparison"] if r["variant"] == "hydra_k0.1")
    cells = [td.text for td in css(driver, '#comparison-table tr[data-variant="hydra_k0.1"] td')]
    lo, hi = hydra_row["ci95"]["benign_acc"]
    assert f"{100 * hydra_row['metrics']['benign_acc']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" in cells
    assert f"{100 * hydra_row['sparsity']:.2f}" in cells
    procedures = {li.get_attribute("data-metric"): li.text for li in css(driver, "#procedures li")}
    assert set(procedures) == set(report["procedures"]) and "PGD-2" in procedures["pgd_acc"]
    # curves per epoch, the accuracy-against-sparsity plot (SVG and the job's PNG), per-layer sparsity
    assert {"curve-loss", "curve-train_acc", "curve-val_acc"} <= {
        e.get_attribute("id") for e in css(driver, "#curves .chart-box")
    }
    assert len(css(driver, "#sparsity-plot polyline")) >= 2  # one plot, drawn from the report
    assert css(driver, "#checks li")
    layer_rows = css(driver, "#layers-table tbody tr")
    assert len(layer_rows) == len(report["variants"]["hydra_k0.1"]["sparsity"]["layers"]) + 1  # + total
    shot(driver, "05-job-report")

    # -- download a network: the browser checks its sha256 against the listing
    name = "hydra_k0.1.compressed.safetensors"
    listing = {a["name"]: a for a in Client(url, service.key).artifacts(job_id)}
    sha_cell = css(driver, f'#artifacts-body tr[data-artifact="{name}"] td.sha')[0]
    assert sha_cell.text == listing[name]["sha256"]
    css(driver, f'button[data-download="{name}"]')[0].click()
    target = downloads / name
    wait_until(driver, lambda d: target.is_file() and not list(downloads.glob("*.crdownload")), what="the download")
    assert hashlib.sha256(target.read_bytes()).hexdigest() == listing[name]["sha256"]
    state = wait_until(
        driver, lambda d: css(d, f'#artifacts-body tr[data-artifact="{name}"] .verified'), what="verified"
    )
    assert state[0].get_attribute("data-verified") == "sha256"
    same_origin_only(driver, url)
    errors_seen += console(driver)

    # -- the list shows it with its headline metrics
    by_id(driver, "nav-jobs").click()
    row = wait_until(driver, lambda d: css(d, f'#jobs-body tr[data-job-id="{job_id}"]'), what="the job's row")[0]
    assert row.get_attribute("data-status") == "succeeded" and "from-the-browser" in row.text
    assert "100%" in row.text
    # every network's headline (the row's `headlines`), and the finished state rather than the last stage
    wait_until(
        driver, lambda d: css(d, f'#jobs-body tr[data-job-id="{job_id}"] li[data-variant]'), what="the headlines"
    )
    lines = {
        li.get_attribute("data-variant"): li.text for li in css(driver, f'#jobs-body tr[data-job-id="{job_id}"] li')
    }
    assert set(lines) == {"dense", "hydra_k0.1", "lwm_k0.1"}, lines
    assert lines["hydra_k0.1"].startswith("hydra_k0.1 (90.00% sparse): benign") and "robust_acc" in lines["hydra_k0.1"]
    assert css(driver, f'#jobs-body tr[data-job-id="{job_id}"] td.phase')[0].text == "succeeded"
    shot(driver, "06-job-list")
    same_origin_only(driver, url)
    errors_seen += console(driver)

    # -- cancel from the job page (a job that would run for a long time)
    long_job = Client(url, service.key).submit({**LONG_SPEC, "name": "to-cancel"})
    driver.get(f"{url}/ui/jobs/{long_job['id']}")
    button = wait_until(
        driver,
        lambda d: by_id(d, "cancel-button").is_displayed() and by_id(d, "cancel-button"),
        what="the cancel button",
    )
    button.click()
    driver.switch_to.alert.accept()
    wait_until(driver, lambda d: by_id(d, "job-status").text == "canceled", timeout=120, what="the cancel")
    assert not by_id(driver, "cancel-button").is_displayed()
    shot(driver, "07-job-canceled")
    errors_seen += console(driver)

    # -- another tenant's key sees none of it
    driver.execute_script("sessionStorage.setItem('hydra.apiKey', arguments[0])", service.create_key("other"))
    driver.get(f"{url}/ui/jobs/{job_id}")
    wait_until(driver, lambda d: "No job" in by_id(d, "flash").text, what="not found for another tenant")
    driver.get(f"{url}/ui/jobs")
    wait_until(driver, lambda d: "No jobs yet" in by_id(d, "jobs-body").text, what="an empty list")

    # -- the API docs, offline: Swagger UI from the service itself, with the operations listed
    driver.get(f"{url}/docs")
    wait_until(driver, lambda d: len(css(d, ".opblock")) >= 10, what="the operations in /docs")
    paths = {e.get_attribute("data-path") or e.text for e in css(driver, ".opblock-summary-path")}
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/report",
        "/v1/jobs/{job_id}/artifacts/{name}",
        "/v1/models",
        "/v1/datasets",
    ):
        assert any(path == p.replace("\u200b", "") for p in paths), (path, paths)
    same_origin_only(driver, url)
    shot(driver, "08-api-docs")
    errors_seen += [e for e in console(driver) if "favicon" not in e.get("message", "")]
    # no JavaScript error and no blocked (CSP) load on any page; the 401/404/422 answers the test provoked
    # are logged by the browser as failed network loads, and are expected
    provoked = ("status of 401", "status of 404", "status of 422")
    unexpected = [
        e for e in errors_seen if not (e.get("source") == "network" and any(p in e["message"] for p in provoked))
    ]
    assert unexpected == [], unexpected
