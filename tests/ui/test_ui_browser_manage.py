"""The dashboard's find / compare / delete / submit-form parts in a real headless browser (Chromium +
Selenium) against the real embedded service: the key remembered in the browser (opt-in) and seen by a
second tab, the submit form over the YAML with the cost estimate shown before submitting, two tiny
jobs compared in one table and one plot, one of them deleted from the list, and /redoc rendered under
its Content-Security-Policy with nothing loaded from outside. Screenshots: ``$HYDRA_TEST_ARTIFACTS/ui``
(default ``/tmp/hydra-test-artifacts/ui``), named ``m0*-*.png``."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hydra_client import Client, HydraError
from tests.client.embedded_service import TINY_SPEC, EmbeddedService
from tests.ui.test_ui_browser import by_id, console, css, same_origin_only, set_editor, shot, wait_until

pytestmark = pytest.mark.slow


def test_submit_form_estimate_compare_and_delete(browser: Any, service: EmbeddedService) -> None:
    driver, url = browser, service.url
    client = Client(url, service.key)
    other = client.submit({**TINY_SPEC, "name": "compare-me"})  # runs while the browser works

    # -- the key, remembered in this browser (opt-in), so a second tab does not ask again
    driver.get(f"{url}/ui/jobs")
    driver.execute_script("sessionStorage.clear(); localStorage.clear()")
    driver.get(f"{url}/ui/jobs")
    wait_until(driver, lambda d: by_id(d, "need-key").is_displayed(), what="the key notice")
    by_id(driver, "api-key").send_keys(service.key)
    by_id(driver, "key-remember").click()
    by_id(driver, "key-save").click()
    wait_until(driver, lambda d: by_id(d, "jobs-table").is_displayed(), what="the job list")
    assert driver.execute_script("return localStorage.getItem('hydra.apiKey')") == service.key
    first_tab = driver.current_window_handle
    driver.switch_to.new_window("tab")
    driver.get(f"{url}/ui/jobs")
    wait_until(driver, lambda d: by_id(d, "jobs-table").is_displayed(), what="the list in a second tab")
    assert "remembered" in by_id(driver, "key-state").text and not by_id(driver, "need-key").is_displayed()
    shot(driver, "m01-key-remembered-second-tab")
    driver.close()
    driver.switch_to.window(first_tab)

    # -- submit: MNIST starting values (not CIFAR's), the form, the estimate before submitting
    by_id(driver, "nav-submit").click()
    wait_until(driver, lambda d: "objective:" in by_id(d, "spec-editor").get_attribute("value"), what="the template")
    template = yaml.safe_load(by_id(driver, "spec-editor").get_attribute("value"))
    assert template["dataset"]["name"] == "mnist5k" and template["objective"]["eps"] == 0.1
    assert "0.0313" not in by_id(driver, "spec-editor").get_attribute("value")
    wait_until(driver, lambda d: by_id(d, "form-eps").get_attribute("value") == "0.1", what="the form filled")
    assert by_id(driver, "form-pretrain").get_attribute("value") == "30"
    wait_until(driver, lambda d: by_id(d, "estimate").get_attribute("data-ready") == "1", what="the estimate")
    assert "sample-passes" in by_id(driver, "estimate-summary").text
    # the tiny job's spec in the editor, then two fields changed from the form
    set_editor(driver, yaml.safe_dump({**TINY_SPEC, "name": "from-the-form"}, sort_keys=False))
    wait_until(driver, lambda d: by_id(d, "form-k").get_attribute("value") == "0.1", what="the form from the YAML")
    eps = by_id(driver, "form-eps")
    eps.clear()
    eps.send_keys("8/255")
    k = by_id(driver, "form-k")
    k.clear()
    k.send_keys("0.1, 0.05")
    by_id(driver, "form-methods").click()  # blur: the change events fire
    wait_until(
        driver,
        lambda d: yaml.safe_load(by_id(d, "spec-editor").get_attribute("value"))["pruning"]["k"] == [0.1, 0.05],
        what="the form written into the YAML",
    )
    edited = yaml.safe_load(by_id(driver, "spec-editor").get_attribute("value"))
    assert edited["objective"]["eps"] == pytest.approx(8 / 255) and edited["name"] == "from-the-form"
    assert "# 8/255" in by_id(driver, "spec-editor").get_attribute("value")
    assert by_id(driver, "form-eps").get_attribute("value") == "8/255"  # shown as typed
    wait_until(
        driver,
        lambda d: (
            by_id(d, "estimate").get_attribute("data-ready") == "1" and len(css(d, "#estimate-table tbody tr")) == 4
        ),
        what="the estimate of the edited spec",
    )
    prune = css(driver, '#estimate-table tr[data-stage="prune"] td')
    assert prune[1].text == "4"  # 2 methods x 2 k values
    shot(driver, "m02-submit-form-with-estimate")
    by_id(driver, "submit-button").click()
    wait_until(driver, lambda d: "/ui/jobs/" in d.current_url, what="the job page")
    job_id = driver.current_url.rsplit("/", 1)[1]
    for jid in (other["id"], job_id):
        row = client.wait(jid, progress=False, timeout=400)
        assert row["status"] == "succeeded", service.logs()[-3000:]

    # -- the list: search, then tick both jobs and compare them
    driver.get(f"{url}/ui/jobs")
    wait_until(driver, lambda d: css(d, f'#jobs-body tr[data-job-id="{job_id}"] li[data-variant]'), what="the rows")
    by_id(driver, "jobs-search").send_keys("from-the")
    wait_until(
        driver,
        lambda d: [tr.get_attribute("data-job-id") for tr in css(d, "#jobs-body tr[data-job-id]")] == [job_id],
        what="the search",
    )
    by_id(driver, "jobs-search").clear()
    by_id(driver, "jobs-search").send_keys("e")  # both names have an e
    wait_until(driver, lambda d: len(css(d, "#jobs-body tr[data-job-id]")) >= 2, what="both jobs")
    for jid in (job_id, other["id"]):
        css(driver, f'#jobs-body tr[data-job-id="{jid}"] input.pick')[0].click()
    shot(driver, "m03-list-selected")
    by_id(driver, "compare-button").click()
    wait_until(driver, lambda d: css(d, "#compare-table tbody tr"), what="the comparison")
    rows = [
        (tr.get_attribute("data-job-id"), tr.get_attribute("data-variant"))
        for tr in css(driver, "#compare-table tbody tr")
    ]
    assert {r[0] for r in rows} == {job_id, other["id"]}
    assert (job_id, "lwm_k0.05") in rows and (other["id"], "hydra_k0.1") in rows and len(rows) == 5 + 3
    assert len(css(driver, "#compare-plot polyline")) >= 4  # benign and robust per job
    shot(driver, "m04-compare-two-jobs")
    same_origin_only(driver, url)
    errors = console(driver)

    # -- delete one from the list
    driver.get(f"{url}/ui/jobs")
    button = wait_until(
        driver, lambda d: css(d, f'#jobs-body tr[data-job-id="{other["id"]}"] button.delete-job'), what="delete"
    )[0]
    button.click()
    driver.switch_to.alert.accept()
    wait_until(driver, lambda d: not css(d, f'#jobs-body tr[data-job-id="{other["id"]}"]'), what="the row gone")
    assert "Deleted job" in by_id(driver, "flash").text
    with pytest.raises(HydraError) as info:
        client.get(other["id"])
    assert info.value.error_code == "not_found"
    shot(driver, "m05-after-delete")
    errors += console(driver)

    # -- /redoc: rendered under its CSP, nothing from outside (Redocly's logo included)
    driver.get(f"{url}/redoc")
    wait_until(driver, lambda d: css(d, "[data-section-id]") or css(d, "h1"), timeout=60, what="ReDoc")
    wait_until(driver, lambda d: "HYDRA" in d.find_element("tag name", "body").text, timeout=60, what="ReDoc's text")
    same_origin_only(driver, url)
    shot(driver, "m06-redoc-offline")
    errors += [e for e in console(driver) if "favicon" not in e.get("message", "")]
    provoked = ("status of 401", "status of 404", "status of 422")
    unexpected = [e for e in errors if not (e.get("source") == "network" and any(p in e["message"] for p in provoked))]
    assert unexpected == [], unexpected
