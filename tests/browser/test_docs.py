"""/docs renders the API's operations with no internet: every file it loads comes from the server."""

from __future__ import annotations

from playwright.sync_api import Browser, Route, expect

OPERATIONS = ["/gallery", "/gallery/entries", "/query", "/transfer", "/health"]


def test_docs_render_offline(server, browser: Browser):
    context = browser.new_context(base_url=server.url)
    outside: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    try:
        page.goto("/docs")
        expect(page.locator(".opblock").first).to_be_visible()
        shown = page.locator(".opblock-summary-path").all_inner_texts()
        for path in OPERATIONS:
            assert path in shown, (path, shown)
        assert not outside, f"/docs reached outside the server: {outside}"
    finally:
        context.close()
