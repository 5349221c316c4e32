"""Fixtures for the browser tests: a real `genreid serve` on the shipped model and a temporary gallery, Debian's
Chromium driven by Playwright (never a downloaded browser), and synthetic person crops, so no data set is needed."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that phones home: the tests must pass on a machine without internet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_SECONDS = 90
# Playwright's 5 s default for expect() is tight for a search plus a transfer on a busy 2-core CI machine.
expect.set_options(timeout=20_000)
DESKTOP = {"width": 1280, "height": 800}


@dataclass(frozen=True)
class Server:
    url: str
    api: httpx.Client  # the JSON API, with the admin key when the server has keys
    keys: dict[str, str]  # role -> a key of that role


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve(data: Path, keys: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> Iterator[Server]:
    """`genreid serve` on the shipped models, as an operator starts it (`extra`: more flags); its output goes to a
    log beside `data`."""
    port = _free_port()
    command = [sys.executable, "-m", "genreid.service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--models", str(ROOT / "models"), "--data", str(data), "--device", "cpu", "--threads", "1",
               "--log-level", "warning", *extra]
    keys = keys or {}
    if keys:
        command += ["--api-keys", ",".join(f"{role}-key:{role}:{secret}" for role, secret in keys.items())]
    log = data.parent / f"server-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENREID_")}
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": keys["admin"]} if keys else {}
    client = httpx.Client(base_url=url, headers=headers, timeout=60)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, f"server exited: {log.read_text()}"
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /health after {STARTUP_SECONDS}s: {log.read_text()}"
            time.sleep(0.1)
        yield Server(url, client, keys)
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _need_chromium() -> None:
    """Skip without Debian's Chromium; fail instead where CI asks for the browser tests (a skip would hide them)."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; .ci/run does)"
        if os.environ.get("REQUIRE_BROWSER_TESTS"):
            pytest.fail(reason)
        pytest.skip(reason)


# Everything here lives for one module at most: while Playwright's sync API is open it leaves its event loop marked
# as running in this thread, so a later test calling asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _need_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One open server for the module: tests use their own person ids, so they do not see each other."""
    _need_chromium()
    with _serve(tmp_path_factory.mktemp("open") / "data") as running:
        yield running


@pytest.fixture
def empty_server(tmp_path: Path) -> Iterator[Server]:
    """A server of this test's own, for views that must show nothing but what the test enrolled."""
    _need_chromium()
    with _serve(tmp_path / "data") as running:
        yield running


@pytest.fixture(scope="module")
def codes_only_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that stores codes only (--no-store-crops): its entries have no crop to show."""
    _need_chromium()
    with _serve(tmp_path_factory.mktemp("codes-only") / "data", extra=("--no-store-crops",)) as running:
        yield running


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with an admin and a query key; its `api` client sends the admin key, the page has to ask."""
    _need_chromium()
    keys = {"admin": "browser-admin-key", "query": "browser-query-key"}
    with _serve(tmp_path_factory.mktemp("keyed") / "data", keys) as running:
        yield running


OpenPage = Callable[..., Page]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """open_page(base_url, hash="", viewport=DESKTOP): a fresh browser context (own sessionStorage) on the page,
    loaded and ready; fails the test on any script error or Content-Security-Policy violation."""
    contexts, problems = [], []

    def record(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(message.text)

    def open_(base_url: str, hash_: str = "", viewport: dict[str, int] = DESKTOP) -> Page:
        # Not UTC, so the page's local-time to UTC conversion of the seen_at window is exercised.
        context = browser.new_context(base_url=base_url, viewport=viewport, timezone_id="Europe/Berlin")
        contexts.append(context)
        page = context.new_page()
        page.on("console", record)
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto(f"/ui/{hash_}")
        page.wait_for_selector("body[data-ready=true]")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not problems, problems


def make_crop(person: int, variant: int = 0) -> bytes:
    """A 64x128 PNG of a standing figure: per-person colours of background, shirt and trousers; per-variant
    offset and arm pose, so two variants are one person seen twice."""
    rng = np.random.default_rng(person)
    background, shirt, trousers = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(3))
    image = Image.new("RGB", (64, 128), background)
    draw = ImageDraw.Draw(image)
    dx = (variant * 5) % 11 - 5
    draw.ellipse((24 + dx, 6, 40 + dx, 24), fill=(224, 180, 150))
    draw.rectangle((18 + dx, 26, 46 + dx, 70), fill=shirt)
    draw.rectangle((20 + dx, 70, 31 + dx, 120), fill=trousers)
    draw.rectangle((33 + dx, 70, 44 + dx, 120), fill=trousers)
    arm = 30 + 8 * (variant % 3)
    draw.line((18 + dx, 30, 8 + dx, arm + 20), fill=shirt, width=6)
    draw.line((46 + dx, 30, 56 + dx, arm + 20), fill=shirt, width=6)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# Test modules cannot import this conftest under --import-mode=importlib: they get the helpers as fixtures.
@pytest.fixture
def crop() -> Callable[[int, int], bytes]:
    return make_crop
