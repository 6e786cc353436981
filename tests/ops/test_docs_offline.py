"""/docs and /redoc work without internet: their scripts and styles are served by the service."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def test_docs_pages_load_their_assets_from_the_service(app) -> None:  # type: ignore[no-untyped-def]
    with TestClient(app) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page).text
            assert not EXTERNAL.search(html), html
            assert "cdn." not in html and "fonts.googleapis" not in html
            assets = re.findall(r"""(?:src|href)=["']?([^"' >]+)""", html)
            assert assets, html
            for asset in assets:
                response = client.get(asset)
                assert response.status_code == 200 and len(response.content) > 1000, asset
        swagger = client.get("/docs").text
        assert "/openapi.json" in swagger and "validatorUrl" in swagger
        bundle = client.get("/static/docs/swagger-ui-bundle.js").text
        assert re.search(r'"5\.\d+\.\d+"', bundle)  # Swagger UI 5: renders the OpenAPI 3.1 that FastAPI writes
        assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
        assert client.get("/docs/oauth2-redirect").status_code == 200
