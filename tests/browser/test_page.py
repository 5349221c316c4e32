"""The operator page in headless Chromium against a real server: what it shows must be what the JSON API says."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any, Protocol

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

GREEN, RED = "rgb(26, 127, 55)", "rgb(198, 40, 40)"  # --same and --different in style.css
BADGES = {True: "within the match threshold", False: "above the match threshold"}
RERANKED_NOTE = "Ordered by re-ranking; the verdict is on the code distance."
XSS = "<img src=x onerror=window.__xss=1>"
UNAUTHORISED = re.compile(r"^401: .*X-API-Key.*Enter the API key above, then try again\.$")
Crop = Callable[[int, int], bytes]


class Served(Protocol):
    """The conftest's Server, as the helpers here use it."""

    url: str
    api: httpx.Client
    keys: dict[str, str]


def upload(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def enrol(server: Served, crop: Crop, people: list[tuple[str, int, int]], camera: str = "1") -> list[dict]:
    """Enrol (person id, colour seed, variant) crops through the JSON API; returns the stored entries."""
    files = [("files", (f"{pid}-{v}.png", crop(seed, v), "image/png")) for pid, seed, v in people]
    data = {"person_id": [pid for pid, _, _ in people], "camera": [camera] * len(people)}
    response = server.api.post("/gallery", files=files, data=data)
    assert response.status_code == 201, response.text
    return response.json()["entries"]


def api_answer(
    server: Served, params: dict[str, Any], files: dict | None = None, data: dict | None = None
) -> dict:
    response = server.api.post("/query", params={"include_noise": "false", **params}, files=files, data=data)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_search(page: Page) -> None:
    """Until the search answered and every thumbnail and preview image has loaded (or shows a placeholder)."""
    expect(page.locator("#search-status")).to_have_attribute("data-kind", "ok")
    page.wait_for_function("""() => !document.querySelector('#search-results .loading, #search-query .loading')
        && [...document.querySelectorAll('#search-results img, #search-query img')].every(i => i.complete)""")


def shown_matches(page: Page) -> list[dict]:
    return page.eval_on_selector_all("#search-results li.tile", """tiles => tiles.map(t => ({
        entry_id: Number(t.dataset.entryId), distance: Number(t.dataset.distance),
        within: t.classList.contains('within') ? true : t.classList.contains('above') ? false : null,
        badge: t.querySelector('.verdict').innerText, badge_colour: getComputedStyle(t.querySelector('.verdict'))
            .backgroundColor,
        border: getComputedStyle(t).borderTopColor, facts: t.querySelector('.facts').innerText,
        thumbnail: t.querySelector('img') && t.querySelector('img').src,
        width: t.querySelector('img') ? t.querySelector('img').naturalWidth : 0}))""")


def assert_page_shows(page: Page, server: Served, answer: dict) -> None:
    """Ranked tiles, borders, verdict badges and the threshold marker (or, re-ranked, the note instead) are the
    API's answer, in order; each thumbnail shows the entry's stored crop."""
    matches = answer["matches"]
    shown = shown_matches(page)
    assert [s["entry_id"] for s in shown] == [m["entry_id"] for m in matches]
    for rank, (tile, match) in enumerate(zip(shown, matches, strict=True), 1):
        assert tile["distance"] == pytest.approx(match["distance"], abs=1e-6)
        assert tile["within"] == match["within_match_threshold"]
        assert tile["badge"] == BADGES[match["within_match_threshold"]]
        colour = GREEN if match["within_match_threshold"] else RED
        assert tile["border"] == tile["badge_colour"] == colour
        assert tile["thumbnail"].startswith("blob:") and tile["width"] > 0, tile
        assert f"Rank\n{rank}" in tile["facts"] and f"Person\n{match['person_id']}" in tile["facts"]
        stored = server.api.get(f"/gallery/entries/{match['entry_id']}/crop")
        thumbnail = f"#search-results li[data-entry-id='{match['entry_id']}'] img"
        np.testing.assert_array_equal(shown_pixels(page, thumbnail), decoded(stored.content))
    threshold = server.api.get("/health").json()["match_threshold"]
    children = page.eval_on_selector_all("#search-results > li", "items => items.map(i => i.className)")
    note = page.locator("#search-order")
    if answer["ranked_by"] == "distance":
        assert children.index("threshold") == sum(m["within_match_threshold"] for m in matches)
        assert children.count("threshold") == 1
        expect(page.locator("#search-results li.threshold")).to_have_text(
            f"entries above this line are within the match threshold (code distance ≤ {threshold:.3f})")
        expect(note).to_be_hidden()
    else:  # not in code-distance order: no line to draw, the badges tell
        assert answer["ranked_by"] == "rerank_distance" and "threshold" not in children
        expect(note).to_be_visible()
        expect(note).to_have_text(RERANKED_NOTE)
    assert "same person" not in page.locator("#search").inner_text().lower()


def test_enrol_through_the_page_with_a_per_file_error(server, open_page, crop):
    page = open_page(server.url, "#enrol")
    before = server.api.get("/gallery").json()["entries"]
    files = [upload("a0.png", crop(101, 0)), upload("broken.png", b"not an image"), upload("a1.png", crop(101, 1))]
    page.set_input_files("#enrol-files", files)
    page.fill("#enrol-person-all", "enrol-a")
    page.fill("#enrol-camera-all", "3")
    page.click("#enrol-fill")
    page.click("#enrol-form button[type=submit]")
    expect(page.locator("#enrol-status")).to_contain_text("2 of 3 crops enrolled")
    rows = page.locator("#enrol-rows > li")
    expect(rows.nth(1)).to_have_attribute("data-state", "error")
    expect(rows.nth(1).locator(".result")).to_contain_text("422: files ('broken.png')")
    for ok in (0, 2):
        expect(rows.nth(ok)).to_have_attribute("data-state", "done")
        expect(rows.nth(ok).locator(".result")).to_contain_text("enrolled as entry")
    assert page.eval_on_selector("#enrol-progress", "p => [p.value, p.max]") == [3, 3]
    stored = server.api.get("/gallery/entries", params={"person_id": "enrol-a"}).json()["entries"]
    assert [(e["person_id"], e["camera"]) for e in stored] == [("enrol-a", "3")] * 2
    assert server.api.get("/gallery").json()["entries"] == before + 2


def test_search_shows_what_the_api_ranks(empty_server, open_page, crop):
    """On a server of its own, so the top 5 are the four crops enrolled here, one of them over the threshold (other
    tests' figures, all alike to the model, would take its place)."""
    server = empty_server
    enrol(server, crop, [("search-a", 201, 0), ("search-a", 201, 1), ("search-b", 202, 0), ("search-c", 203, 0)])
    page = open_page(server.url, "#search")
    page.set_input_files("#search-file", upload("query.png", crop(201, 0)))
    page.fill("#search-k", "5")
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    answer = api_answer(server, {"k": 5}, files={"file": ("query.png", crop(201, 0))})
    matches = answer["matches"]
    assert {m["within_match_threshold"] for m in matches} == {True, False}, "the test needs both verdicts"
    assert_page_shows(page, server, answer)
    health = server.api.get("/health").json()
    estimate = health["false_match_rate_at_gallery_size"]
    assert estimate is not None and estimate["gallery"] == 4, "the shipped model.json records false matches"
    shown = re.search(r"match threshold (\d\.\d{3}): a stranger's best match passes it in about ([\d.]+)% of "
                      r"queries at this gallery size", page.locator("#server").inner_text())
    assert shown, page.locator("#server").inner_text()
    assert float(shown[1]) == pytest.approx(health["match_threshold"], abs=5e-4)
    assert float(shown[2]) == pytest.approx(100 * estimate["rate"], abs=0.05)
    figures = page.locator("#search-query figure")
    expect(figures).to_have_count(3)  # the query, its noise, the crop regenerated from both
    assert all(page.eval_on_selector_all("#search-query img", "images => images.map(i => i.naturalWidth > 0)"))

    page.locator("#search-results li.tile").first.get_by_role("button", name="Search from this entry").click()
    expect(page.locator("#search-status")).to_contain_text(f"entry {matches[0]['entry_id']}")
    wait_for_search(page)
    from_entry = api_answer(server, {"k": 5}, data={"entry_id": str(matches[0]["entry_id"])})
    assert matches[0]["entry_id"] not in [m["entry_id"] for m in from_entry["matches"]]
    assert_page_shows(page, server, from_entry)


def drop_file(page: Page, zone: str, name: str, data: bytes) -> None:
    """Drop a file on a drop zone as a user dragging it from the desktop would."""
    transfer = page.evaluate_handle("""([name, bytes]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/png'}));
        return transfer;
    }""", [name, list(data)])
    page.dispatch_event(f".drop[data-input={zone}]", "drop", {"dataTransfer": transfer})


def test_search_filters_by_camera_on_a_dropped_crop(server, open_page, crop):
    enrol(server, crop, [("camera-a", 211, 0)], camera="7")
    enrol(server, crop, [("camera-a", 211, 1)], camera="8")
    page = open_page(server.url, "#search")
    drop_file(page, "search-file", "query.png", crop(211, 0))
    assert page.eval_on_selector("#search-file", "input => input.files[0].name") == "query.png"
    page.fill("#search-cameras", "7, 8")
    page.fill("#search-exclude", "7")
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    answer = api_answer(server, {"k": 10, "camera": ["7", "8"], "exclude_camera": "7"},
                        files={"file": ("query.png", crop(211, 0))})
    assert [m["camera"] for m in answer["matches"]] == ["8"]
    assert_page_shows(page, server, answer)


def test_search_within_a_seen_at_window(server, open_page, crop):
    people = [("seen-a", 212, v) for v in range(3)]
    files = [("files", (f"{v}.png", crop(seed, v), "image/png")) for _, seed, v in people]
    seen = ["2026-01-01T10:00:00Z", "2026-01-01T12:00:00Z", "2026-01-01T14:00:00Z"]
    data = {"person_id": [pid for pid, _, _ in people], "seen_at": seen}
    assert server.api.post("/gallery", files=files, data=data).status_code == 201
    page = open_page(server.url, "#search")  # in Europe/Berlin: UTC+1 in January
    page.set_input_files("#search-file", upload("query.png", crop(212, 0)))
    page.fill("#search-after", "2026-01-01T12:30:00")
    page.fill("#search-before", "2026-01-01T14:30:00")
    with page.expect_request("**/query?*") as request:
        page.click("#search-form button[type=submit]")
    assert "seen_after=2026-01-01T11%3A30%3A00Z&seen_before=2026-01-01T13%3A30%3A00Z" in request.value.url
    wait_for_search(page)
    window = {"seen_after": "2026-01-01T11:30:00Z", "seen_before": "2026-01-01T13:30:00Z"}
    answer = api_answer(server, {"k": 10, **window}, files={"file": ("query.png", crop(212, 0))})
    assert [m["seen_at"] for m in answer["matches"] if m["person_id"] == "seen-a"] == [seen[1]]
    assert_page_shows(page, server, answer)
    expect(page.locator("#search-results li.tile").first).to_contain_text(f"Seen{seen[1]}")


def test_search_re_ranked(server, open_page, crop):
    enrol(server, crop, [(f"rerank-{p}", 290 + p, v) for p in range(5) for v in range(3)])
    page = open_page(server.url, "#search")
    page.set_input_files("#search-file", upload("query.png", crop(290, 5)))
    page.select_option("#search-rerank", "true")
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    answer = api_answer(server, {"k": 10, "rerank": "true"}, files={"file": ("query.png", crop(290, 5))})
    matches = answer["matches"]
    assert answer["ranked_by"] == "rerank_distance" and any(m["rerank_distance"] is not None for m in matches)
    assert_page_shows(page, server, answer)
    reranked = page.locator("#search-results li.tile").first.locator(".facts")
    expect(reranked).to_contain_text(f"Re-ranked{matches[0]['rerank_distance']:.3f}")

    page.select_option("#search-rerank", "false")  # the same query by code distance: the line is back
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    assert_page_shows(page, server, api_answer(server, {"k": 10, "rerank": "false"},
                                               files={"file": ("query.png", crop(290, 5))}))


def tab_to(page: Page, condition: str, limit: int = 80) -> None:
    """Press Tab until the focused element meets `condition` (JS, on `el`): reachable by keyboard alone."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate(f"() => {{ const el = document.activeElement; return Boolean({condition}); }}"):
            return
    raise AssertionError(f"Tab never reached an element where {condition}")


def test_search_with_the_keyboard_only(server, open_page, crop):
    enrol(server, crop, [("keys-a", 221, 0), ("keys-b", 222, 0)])
    page = open_page(server.url, "#search")
    # Listening from here on: Playwright turns file-chooser interception on without waiting for the browser, so a
    # listener added just before the key press can miss the chooser it opens.
    page.on("filechooser", lambda chooser: chooser.set_files(upload("query.png", crop(221, 0))))
    tab_to(page, "el.id === 'search-file'")
    page.keyboard.press("Space")
    page.wait_for_function("() => document.getElementById('search-file').files.length === 1")
    tab_to(page, "el.type === 'submit' && el.form && el.form.id === 'search-form'")
    page.keyboard.press("Enter")
    wait_for_search(page)
    answer = api_answer(server, {"k": 10}, files={"file": ("query.png", crop(221, 0))})
    assert_page_shows(page, server, answer)
    tab_to(page, "el.textContent === 'Search from this entry'")
    page.keyboard.press("Enter")
    expect(page.locator("#search-status")).to_contain_text(f"entry {answer['matches'][0]['entry_id']}")
    wait_for_search(page)


def test_delete_with_the_keyboard_only(server, open_page, crop):
    (entry,) = enrol(server, crop, [("keys-delete", 223, 0)])
    page = open_page(server.url, "#gallery")
    tab_to(page, "el.id === 'gallery-person'")
    page.keyboard.type("keys-delete")
    page.keyboard.press("Enter")
    expect(page.locator("#gallery-entries > li")).to_have_count(1)
    tab_to(page, "el.textContent === 'Delete entry'")
    page.keyboard.press("Enter")
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#confirm")).to_be_hidden()
    assert server.api.get(f"/gallery/entries/{entry['entry_id']}").status_code == 200
    page.keyboard.press("Enter")  # focus is back on "Delete entry"
    expect(page.locator("#confirm-cancel")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#gallery-entries > li")).to_have_count(0)
    expect(page.locator("#gallery-title")).to_be_focused()
    assert server.api.get(f"/gallery/entries/{entry['entry_id']}").status_code == 404


def gallery_counts(server: Served) -> dict[str, int]:
    return server.api.get("/gallery").json()


def test_delete_through_the_gallery(server, open_page, crop):
    entries = enrol(server, crop, [("delete-a", 231, 0), ("delete-a", 231, 1), ("delete-a", 231, 2)])
    page = open_page(server.url, "#gallery")
    page.fill("#gallery-person", "delete-a")
    page.click("#gallery-form button[type=submit]")
    tiles = page.locator("#gallery-entries > li")
    expect(tiles).to_have_count(3)
    assert [int(t) for t in tiles.evaluate_all("ts => ts.map(t => t.dataset.entryId)")] == \
        [e["entry_id"] for e in entries]
    expect(tiles.locator("img")).to_have_count(3)  # the stored crops
    before = gallery_counts(server)
    expect(page.locator("#gallery-counts")).to_contain_text(f"{before['entries']} entries")

    tiles.first.get_by_role("button", name="Delete entry").click()
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-cancel")
    assert gallery_counts(server) == before

    tiles.first.get_by_role("button", name="Delete entry").click()
    page.click("#confirm-ok")
    expect(page.locator("#gallery-status")).to_contain_text(f"Entry {entries[0]['entry_id']} deleted")
    expect(tiles).to_have_count(2)
    assert gallery_counts(server)["entries"] == before["entries"] - 1
    expect(page.locator("#gallery-counts")).to_contain_text(f"{before['entries'] - 1} entries")

    tiles.first.get_by_role("button", name="Delete person").click()
    expect(page.locator("#confirm-message")).to_have_text("Delete every entry of person delete-a (2 entries)?")
    page.click("#confirm-ok")
    expect(tiles).to_have_count(0)
    after = gallery_counts(server)
    assert after == {"entries": before["entries"] - 3, "persons": before["persons"] - 1}
    expect(page.locator("#gallery-counts")).to_contain_text(f"{after['entries']} entries of {after['persons']}")


def test_entries_without_a_stored_crop_show_a_placeholder(codes_only_server, open_page, crop):
    entries = enrol(codes_only_server, crop, [("nocrop-a", 241, 0), ("nocrop-b", 242, 0)])
    assert [e["has_crop"] for e in entries] == [False, False]
    page = open_page(codes_only_server.url, "#gallery")
    page.fill("#gallery-person", "nocrop-a")
    page.click("#gallery-form button[type=submit]")
    tiles = page.locator("#gallery-entries > li")
    expect(tiles).to_have_count(1)
    expect(tiles.get_by_role("img", name="No stored crop for")).to_be_visible()
    expect(tiles.locator("img")).to_have_count(0)

    page = open_page(codes_only_server.url, "#search")
    page.set_input_files("#search-file", upload("query.png", crop(241, 0)))
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    results = page.locator("#search-results li.tile")
    expect(results).to_have_count(2)
    expect(results.get_by_role("img", name="No stored crop for")).to_have_count(2)


def test_gallery_pages_and_person_ids_with_slashes_or_dots(server, open_page, crop):
    enrol(server, crop, [("page-a", 281, v) for v in range(26)])
    enrol(server, crop, [("page/b", 282, 0), ("..", 283, 0)])
    page = open_page(server.url, "#gallery")
    page.fill("#gallery-person", "page-a")
    page.click("#gallery-form button[type=submit]")
    tiles = page.locator("#gallery-entries > li")
    expect(tiles).to_have_count(24)
    expect(page.locator("#gallery-range")).to_have_text("1–24 of 26 for person page-a")
    expect(page.locator("#gallery-prev")).to_be_disabled()
    page.click("#gallery-next")
    expect(tiles).to_have_count(2)
    expect(page.locator("#gallery-range")).to_have_text("25–26 of 26 for person page-a")
    expect(page.locator("#gallery-next")).to_be_disabled()

    page.fill("#gallery-person", "page/b")  # a "/" travels percent-encoded: the person goes at once
    page.click("#gallery-form button[type=submit]")
    expect(tiles).to_have_count(1)
    tiles.first.get_by_role("button", name="Delete person").click()
    page.click("#confirm-ok")
    expect(page.locator("#gallery-status")).to_contain_text("Person page/b deleted: 1 entry removed")
    expect(tiles).to_have_count(0)

    page.fill("#gallery-person", "..")  # URLs fold a ".." segment away, even percent-encoded
    page.click("#gallery-form button[type=submit]")
    expect(tiles).to_have_count(1)
    tiles.first.get_by_role("button", name="Delete person").click()
    expect(page.locator("#gallery-status")).to_contain_text("delete its entries one by one")
    tiles.first.get_by_role("button", name="Delete entry").click()
    page.click("#confirm-ok")
    expect(tiles).to_have_count(0)


def shown_pixels(page: Page, selector: str) -> np.ndarray:
    """The RGB pixels of a displayed image, read back through a canvas."""
    width, height, data = page.eval_on_selector(selector, """img => {
        const canvas = document.createElement('canvas');
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        return [canvas.width, canvas.height, Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)];
    }""")
    return np.array(data, np.uint8).reshape(height, width, 4)[..., :3]


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def render(page: Page) -> np.ndarray:
    page.click("#transfer-form button[type=submit]")
    expect(page.locator("#transfer-status")).to_have_attribute("data-kind", "ok")
    page.wait_for_function("() => document.getElementById('transfer-image').complete")
    return shown_pixels(page, "#transfer-image")


def test_transfer_from_an_entry_and_from_a_crop(server, open_page, crop):
    (entry,) = enrol(server, crop, [("transfer-a", 241, 0)])
    pose = crop(242, 1)
    page = open_page(server.url, "#transfer")
    page.fill("#transfer-entry", str(entry["entry_id"]))
    page.set_input_files("#transfer-pose", upload("pose.png", pose))
    page.fill("#transfer-scale", "2")
    shown = render(page)
    expected = server.api.post("/transfer", params={"scale": 2}, data={"identity_entry_id": entry["entry_id"]},
                               files={"pose": ("pose.png", pose)})
    assert expected.status_code == 200, expected.text
    np.testing.assert_array_equal(shown, decoded(expected.content))
    assert page.get_attribute("#transfer-image", "alt") == f"the person of entry {entry['entry_id']} rendered in " \
        "the pose of pose.png"

    page.check('input[name="identity"][value="crop"]')
    page.set_input_files("#transfer-identity", upload("identity.png", crop(241, 0)))
    shown = render(page)
    expected = server.api.post("/transfer", params={"scale": 2},
                               files={"identity": ("identity.png", crop(241, 0)), "pose": ("pose.png", pose)})
    np.testing.assert_array_equal(shown, decoded(expected.content))


def test_person_ids_are_shown_as_text_and_never_run(server, open_page, crop):
    page = open_page(server.url, "#enrol")
    page.set_input_files("#enrol-files", upload("xss.png", crop(251, 0)))
    page.locator("#enrol-rows .person").fill(XSS)
    page.locator("#enrol-rows .camera").fill("<b>cam</b>")
    page.click("#enrol-form button[type=submit]")
    expect(page.locator("#enrol-rows > li")).to_have_attribute("data-state", "done")

    page.goto("/ui/#gallery")
    page.fill("#gallery-person", XSS)
    page.click("#gallery-form button[type=submit]")
    tile = page.locator("#gallery-entries > li")
    expect(tile).to_have_count(1)
    expect(tile.locator("dd").nth(0)).to_have_text(XSS)
    expect(tile.locator("dd").nth(1)).to_have_text("<b>cam</b>")
    expect(page.locator("#gallery-range")).to_contain_text(f"for person {XSS}")

    page.goto("/ui/#search")
    page.set_input_files("#search-file", upload("query.png", crop(251, 0)))
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    person = page.locator("#search-results li.tile").first.locator(
        ".facts div", has=page.locator("dt", has_text=re.compile("^Person$")))
    expect(person.locator("dd")).to_have_text(XSS)  # after the rank and distances, however many

    assert page.evaluate("() => window.__xss") is None
    assert page.locator('img[src="x"], b').count() == 0


def test_without_the_key_every_action_shows_the_401(keyed_server, open_page, crop):
    key = keyed_server.keys["admin"]
    before = gallery_counts(keyed_server)["entries"]
    page = open_page(keyed_server.url, "#gallery")
    sent: list[tuple[str, str | None]] = []
    page.on("request", lambda request: sent.append((request.url, request.headers.get("x-api-key"))))
    expect(page.locator("#gallery-status")).to_contain_text(UNAUTHORISED)
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.locator("#key-input")).to_be_focused()

    page.goto("/ui/#search")
    page.set_input_files("#search-file", upload("query.png", crop(261, 0)))
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-status")).to_contain_text(UNAUTHORISED)
    page.goto("/ui/#transfer")
    page.check('input[name="identity"][value="crop"]')
    page.set_input_files("#transfer-identity", upload("identity.png", crop(261, 0)))
    page.set_input_files("#transfer-pose", upload("pose.png", crop(262, 0)))
    page.click("#transfer-form button[type=submit]")
    expect(page.locator("#transfer-status")).to_contain_text(UNAUTHORISED)
    page.goto("/ui/#enrol")
    page.set_input_files("#enrol-files", upload("a.png", crop(261, 0)))
    page.locator("#enrol-rows .person").fill("keyed-a")
    page.click("#enrol-form button[type=submit]")
    expect(page.locator("#enrol-rows .result")).to_contain_text(UNAUTHORISED)
    assert gallery_counts(keyed_server)["entries"] == before

    page.fill("#key-input", key)
    page.press("#key-input", "Enter")
    expect(page.locator("#key-panel")).to_be_hidden()
    page.click("#enrol-form button[type=submit]")
    expect(page.locator("#enrol-rows > li")).to_have_attribute("data-state", "done")
    assert gallery_counts(keyed_server)["entries"] == before + 1
    page.goto("/ui/#gallery")
    page.fill("#gallery-person", "keyed-a")
    page.click("#gallery-form button[type=submit]")
    expect(page.locator("#gallery-entries img")).to_have_count(1)  # its crop, fetched with the key
    expect(page.locator("#gallery-counts")).to_contain_text(f"holds {before + 1} ")
    api_calls = [(url, header) for url, header in sent if "/ui/" not in url]
    assert api_calls and all(key not in url for url, _ in sent)
    assert any(header == key for _, header in api_calls)


def test_a_key_without_the_role_shows_the_403(keyed_server, open_page, crop):
    (entry,) = enrol(keyed_server, crop, [("role-a", 264, 0)])
    page = open_page(keyed_server.url, "#gallery")
    page.fill("#key-input", keyed_server.keys["query"])
    page.press("#key-input", "Enter")
    tile = page.locator(f"#gallery-entries > li[data-entry-id='{entry['entry_id']}']")
    tile.get_by_role("button", name="Delete entry").click()
    page.click("#confirm-ok")
    expect(page.locator("#gallery-status")).to_contain_text(
        re.compile(r"^403: .*query.*admin.*Enter a key with that role above, then try again\.$"))
    expect(page.locator("#key-panel")).to_be_visible()
    assert keyed_server.api.get(f"/gallery/entries/{entry['entry_id']}").status_code == 200


VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}


@pytest.mark.parametrize("viewport", VIEWPORTS.values(), ids=VIEWPORTS.keys())
def test_no_view_overflows_sideways(server, open_page, crop, viewport):
    long_id = f"a-{viewport['width']}-px-person-id-with-no-space-to-break-" + "x" * 60
    enrol(server, crop, [(long_id, 271, 0)], camera="camera-" + "y" * 60)
    page = open_page(server.url, "#search", viewport)

    def assert_fits(view: str) -> None:
        """No sideways scrolling, and every picture has a text alternative."""
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{view} is {width[0]} px wide in a {width[1]} px window"
        unlabelled = page.eval_on_selector_all(
            "img, [role=img]", "els => els.filter(e => !(e.alt || e.getAttribute('aria-label'))).length")
        assert unlabelled == 0, f"{view}: {unlabelled} images without a text alternative"

    page.set_input_files("#search-file", upload("query.png", crop(271, 0)))
    page.click("#search-form button[type=submit]")
    wait_for_search(page)
    assert_fits("search")
    page.goto("/ui/#enrol")
    page.set_input_files("#enrol-files", [upload(f"{'long-name-' * 6}{i}.png", crop(272, i)) for i in range(3)])
    assert_fits("enrol")
    page.goto("/ui/#gallery")
    page.fill("#gallery-person", long_id)
    page.click("#gallery-form button[type=submit]")
    expect(page.locator("#gallery-entries > li")).to_have_count(1)
    assert_fits("gallery")
    page.goto("/ui/#transfer")
    page.check('input[name="identity"][value="crop"]')
    page.set_input_files("#transfer-identity", upload("identity.png", crop(271, 0)))
    page.set_input_files("#transfer-pose", upload("pose.png", crop(273, 0)))
    page.fill("#transfer-scale", "8")
    render(page)
    assert_fits("transfer")
