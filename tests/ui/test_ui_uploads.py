"""The upload page: served as a shell with the strict CSP, linked from every page, /ui/models and
/ui/datasets lead to it, and its script sends the key only as the Authorization header."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

STATIC = Path(__file__).resolve().parents[2] / "api" / "static"


def test_the_upload_page_is_served_and_linked(ui_app) -> None:  # type: ignore[no-untyped-def]
    with TestClient(ui_app) as client:
        for alias in ("/ui/models", "/ui/datasets"):
            answer = client.get(alias, follow_redirects=False)
            assert answer.status_code == 307 and answer.headers["location"] == "/ui/uploads"
        page = client.get("/ui/uploads")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        assert "<script>" not in page.text and " style=" not in page.text
        for form_id in ('id="model-form"', 'id="dataset-form"', 'name="image_size"', 'name="channels"'):
            assert form_id in page.text
        for asset in re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page.text):
            assert client.get(asset).status_code == 200, asset
        assert "/ui/static/uploads.js" in page.text
        assert 'href="/ui/uploads"' in client.get("/ui/jobs").text  # the nav link on every page


def test_the_upload_script_keeps_the_key_in_the_header_and_writes_no_html() -> None:
    script = (STATIC / "uploads.js").read_text()
    assert "Authorization: `Bearer ${getKey()}`" in script and "sessionStorage" in script
    # the key the user chose to remember in this browser (hydra.js's opt-in) is read, never written here
    assert "localStorage.setItem" not in script and "document.cookie" not in script
    assert "DELETE" in script  # each upload can be deleted from the page
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script  # the service's text stays text
    assert '"/v1/models"' in script and '"/v1/datasets"' in script
