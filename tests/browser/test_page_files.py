"""The page's files as served, checked without a browser: a strict Content-Security-Policy, no inline script
for it to forbid, only the listed files, and /docs pointing at the server's own files."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from genreid.service.app import create_app
from genreid.service.routes.ui import DOCS_FILES, PAGE_FILES
from genreid.service.settings import Settings


@pytest.fixture(scope="module")
def client() -> TestClient:
    # Outside `with`, the lifespan does not run: static files need no models and no gallery.
    return TestClient(create_app(Settings()))


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_the_page_forbids_inline_script(client: TestClient):
    response = client.get("/ui/")
    assert response.status_code == 200
    policy = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert "unsafe" not in response.headers["content-security-policy"]
    parsed = Tags()
    parsed.feed(response.text)
    assert not parsed.script_text
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert not [(tag, name) for tag, attrs in parsed.tags for name in attrs if name.startswith("on") or name == "style"]


def test_every_page_file_is_served_with_the_policy(client: TestClient):
    for name in PAGE_FILES:
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-security-policy"].startswith("default-src 'none'")


@pytest.mark.parametrize("path", ["/ui/__init__.py", "/ui/..%2F__init__.py", "/docs/files/core.py",
                                  "/docs/files/..%2F__init__.py"])
def test_nothing_but_the_listed_files(client: TestClient, path: str):
    assert client.get(path).status_code == 404


def test_root_leads_to_the_page(client: TestClient):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "ui/"
    assert client.get("/").url.path == "/ui/"


def test_docs_load_only_the_servers_files(client: TestClient):
    parsed = Tags()
    parsed.feed(client.get("/docs").text)
    urls = [attrs.get("src") or attrs.get("href") for tag, attrs in parsed.tags if tag in ("script", "link")]
    assert urls and all(url.startswith("/docs/files/") for url in urls if url)
    for name in DOCS_FILES:
        assert client.get(f"/docs/files/{name}").status_code == 200, name
    assert client.get("/redoc").status_code == 404
