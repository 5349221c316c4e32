"""Screenshots of the search and gallery views, the README's pictures of the page. Real Market-1501 crops when the
subset is on this machine, synthetic ones otherwise. They land in the test's temporary folder, or, to refresh the
committed ones: GENREID_UI_FIGURES=docs/figures pytest tests/browser/test_screenshots.py"""

from __future__ import annotations

import os
import re
from pathlib import Path

from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]
MARKET = Path(os.environ.get("GENREID_MARKET_SUBSET", ROOT.parent / "shared/data/market1501-subset"))
PERSONS, CROPS_EACH = 6, 3


def market_crops() -> tuple[list[tuple[str, str, bytes]], bytes]:
    """(person id, camera, JPEG) for a few test identities, and a query crop of the first one."""
    queries = sorted((MARKET / "query").glob("*.jpg"))
    gallery, persons = [], []
    for person in sorted({path.name[:4] for path in queries}):
        crops = sorted((MARKET / "bounding_box_test").glob(f"{person}_*.jpg"))[:CROPS_EACH]
        gallery += [(person, re.match(r"\d{4}_c(\d)", path.name).group(1), path.read_bytes()) for path in crops]
        persons += [person] if crops else []
        if len(persons) == PERSONS:
            break
    return gallery, next(q for q in queries if q.name.startswith(persons[0])).read_bytes()


def synthetic_crops(crop) -> tuple[list[tuple[str, str, bytes]], bytes]:
    gallery = [(f"{300 + p:04d}", str(1 + v), crop(300 + p, v)) for p in range(PERSONS) for v in range(CROPS_EACH)]
    return gallery, crop(300, 5)


def shoot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("GENREID_UI_FIGURES", tmp_path))
    page.screenshot(path=folder / name, full_page=True)


def test_screenshots_of_search_and_gallery(empty_server, open_page, crop, tmp_path):
    gallery, query = market_crops() if (MARKET / "query").is_dir() else synthetic_crops(crop)
    files = [("files", (f"{i}.jpg", data)) for i, (_, _, data) in enumerate(gallery)]
    data = {"person_id": [p for p, _, _ in gallery], "camera": [c for _, c, _ in gallery]}
    assert empty_server.api.post("/gallery", files=files, data=data).status_code == 201

    page = open_page(empty_server.url, "#search")
    page.set_input_files("#search-file", {"name": "query.jpg", "mimeType": "image/jpeg", "buffer": query})
    page.fill("#search-k", "8")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-query figure")).to_have_count(3)
    page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete) && "
                           "!document.querySelector('.loading')")
    shoot(page, "ui-search.png", tmp_path)

    page.goto("/ui/#gallery")
    expect(page.locator("#gallery-entries img")).to_have_count(len(gallery))
    page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete)")
    shoot(page, "ui-gallery.png", tmp_path)
