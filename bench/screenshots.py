"""Screenshots of the operator page's search and gallery views: the pictures of the page in the README and
docs/API.md (docs/figures/ui-search.png, ui-gallery.png). Run by hand after a change to the page.

Starts `genreid serve` on the shipped models (models/) with an empty gallery, enrols a few test identities (the
Market-1501 subset when it is on this machine, else synthetic crops) and shoots the page in Debian's Chromium
driven by Playwright (never a downloaded browser: apt-get install -y chromium).

    python bench/screenshots.py                          # refresh docs/figures/ui-*.png
    python bench/screenshots.py --out /tmp/shots         # somewhere else
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKET = Path(os.environ.get("GENREID_MARKET_SUBSET", REPO_ROOT.parent / "shared/data/market1501-subset"))
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that phones home: the page is shot offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PERSONS, CROPS_EACH = 6, 3
STARTUP_SECONDS = 90

Gallery = list[tuple[str, str, bytes]]  # (person id, camera, JPEG) per crop


def market_crops(root: Path) -> tuple[Gallery, bytes]:
    """A few crops of each of the first test identities of a Market-1501 folder, and a query crop of the first."""
    queries = sorted((root / "query").glob("*.jpg"))
    gallery: Gallery = []
    persons: list[str] = []
    for person in sorted({path.name[:4] for path in queries}):
        crops = sorted((root / "bounding_box_test").glob(f"{person}_*.jpg"))[:CROPS_EACH]
        gallery += [(person, re.match(r"\d{4}_c(\d)", path.name).group(1), path.read_bytes()) for path in crops]
        persons += [person] if crops else []
        if len(persons) == PERSONS:
            break
    return gallery, next(q for q in queries if q.name.startswith(persons[0])).read_bytes()


def synthetic_crops(folder: Path) -> tuple[Gallery, bytes]:
    """The same from the procedural data set (needs the `train` extra), for a machine without Market-1501."""
    from genreid.training.data.synthetic import write_synthetic_market

    return market_crops(write_synthetic_market(folder, train_identities=0, test_identities=PERSONS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(data: Path) -> Iterator[tuple[str, httpx.Client]]:
    """`genreid serve` on the shipped models with its gallery in `data`: (its URL, a client of its API)."""
    port = free_port()
    command = [sys.executable, "-m", "genreid.service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--models", str(REPO_ROOT / "models"), "--data", str(data), "--device", "cpu", "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENREID_")}  # the flags alone configure it
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=60)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"genreid serve exited with {process.returncode}")
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"genreid serve gave no /health within {STARTUP_SECONDS}s")
            time.sleep(0.1)
        yield url, client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=20)


def shoot(page: Page, gallery: Gallery, query: bytes, out: Path) -> None:
    """A search for `query` among the enrolled crops, then the gallery view, each once every image has loaded."""
    page.goto("/ui/#search")
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#search-file", {"name": "query.jpg", "mimeType": "image/jpeg", "buffer": query})
    page.fill("#search-k", "8")
    page.click("#search-form button[type=submit]")
    expect(page.locator("#search-query figure")).to_have_count(3)
    page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete) && "
                           "!document.querySelector('.loading')")
    page.screenshot(path=out / "ui-search.png", full_page=True)

    page.goto("/ui/#gallery")
    expect(page.locator("#gallery-entries img")).to_have_count(len(gallery))
    page.wait_for_function("() => [...document.querySelectorAll('main img')].every(i => i.complete)")
    page.screenshot(path=out / "ui-gallery.png", full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "figures",
                        help="folder for ui-search.png and ui-gallery.png (default docs/figures)")
    parser.add_argument("--market", type=Path, default=MARKET,
                        help="a Market-1501 folder to take the crops from (default ../shared/data/market1501-subset; "
                             "synthetic crops where it is missing)")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=20_000)
    with tempfile.TemporaryDirectory(prefix="genreid-screenshots-") as tmp:
        gallery, query = market_crops(args.market) if (args.market / "query").is_dir() \
            else synthetic_crops(Path(tmp) / "market")
        with serve(Path(tmp) / "data") as (url, api), sync_playwright() as playwright:
            files = [("files", (f"{i}.jpg", data)) for i, (_, _, data) in enumerate(gallery)]
            fields = {"person_id": [p for p, _, _ in gallery], "camera": [c for _, c, _ in gallery]}
            api.post("/gallery", files=files, data=fields).raise_for_status()
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_context(base_url=url, viewport=DESKTOP).new_page()
            shoot(page, gallery, query, args.out)
            browser.close()
    print(f"wrote {args.out / 'ui-search.png'} and {args.out / 'ui-gallery.png'}")


if __name__ == "__main__":
    main()
