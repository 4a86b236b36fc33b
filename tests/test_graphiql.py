"""GraphiQL offline: the page names no other host, its assets come from the package with caching
headers, and a real Chromium with every other host blocked runs a query and a subscription in it."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from checkmate.models import StageStatus
from schema.graphiql import ASSETS, ASSETS_PATH, IMMUTABLE
from tests.graphql_helpers import Api, insert_tasks, running_api
from tests.subscription_support import ServerProcess
from tests.test_events import new_tasks, set_status
from tests.test_subscriptions import wait_for_subscribers

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
BROWSER_GET = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
ASSET_NAMES = sorted(path.name for path in ASSETS.iterdir() if path.suffix in (".js", ".css"))


async def graphiql_html(api: Api) -> str:
    response = await api.client.get("/graphql", headers=BROWSER_GET)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    return response.text


async def test_the_page_names_no_other_host(settings: Any) -> None:
    async with running_api(settings) as api:
        html = await graphiql_html(api)
    assert "://" not in html
    assert not re.search(r"""["'(]//""", html)  # no protocol-relative URL either
    references = re.findall(r"""(?:src|href)="([^"]*)\"""", html)
    assets = {ref.removeprefix(f"{ASSETS_PATH}/") for ref in references if ref != "data:,"}
    assert assets == set(ASSET_NAMES)  # every asset the page loads, each from this server
    for name in ASSET_NAMES:
        if name.endswith(".css"):  # fonts and images inlined, none fetched
            urls = re.findall(r"url\(\s*['\"]?([^'\")]*)", (ASSETS / name).read_text())
            assert all(url.startswith("data:") for url in urls), name


async def test_behind_a_path_prefix_the_page_points_under_it(settings: Any) -> None:
    """A proxy serving the API under /checkmate (uvicorn --root-path /checkmate)."""
    async with running_api(settings) as api:
        transport = httpx.ASGITransport(app=api.app, root_path="/checkmate")
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            html = (await client.get("/checkmate/graphql", headers=BROWSER_GET)).text
            script = re.search(r'src="([^"]*/react.production.min.js)"', html)
            assert script is not None
            assert script[1] == f"/checkmate{ASSETS_PATH}/react.production.min.js"
            assert (await client.get(script[1])).status_code == 200


async def test_assets_answer_with_immutable_caching_and_gzip(settings: Any) -> None:
    async with running_api(settings) as api:
        for name in ASSET_NAMES:
            response = await api.client.get(
                f"{ASSETS_PATH}/{name}", headers={"accept-encoding": "gzip"}
            )
            assert response.status_code == 200, name
            assert response.headers["cache-control"] == IMMUTABLE
            assert response.content == (ASSETS / name).read_bytes()
            if len(response.content) > 2000:
                assert response.headers["content-encoding"] == "gzip", name
            revalidated = await api.client.get(
                f"{ASSETS_PATH}/{name}", headers={"if-none-match": response.headers["etag"]}
            )
            assert revalidated.status_code == 304
        stale = await api.client.get("/graphql/static/0000000000000000/graphiql.min.js")
        assert stale.status_code == 404
        assert "cache-control" not in stale.headers  # only content is cached for good
        assert (await api.client.get(f"{ASSETS_PATH}/../graphiql.html")).status_code == 404


def test_licences_and_versions_are_kept() -> None:
    versions = json.loads((ASSETS / "versions.json").read_text())
    assert set(versions) == set(ASSET_NAMES)
    licences = (ASSETS / "THIRD_PARTY_LICENSES.txt").read_text()
    for source in versions.values():  # "package@version/path in the package"
        package_at_version = re.match(r"(@?[^@/]+(?:/[^@/]+)?@[^/]+)/", source)
        assert package_at_version is not None, source
        assert f"\n{package_at_version[1]} (MIT)\n" in licences


# --- the browser ---------------------------------------------------------------------------


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium): no browser")
    return path


async def editor_value(page: Any, editor: str) -> str:
    value: str = await page.evaluate(
        "(selector) => document.querySelector(selector).CodeMirror.getValue()",
        f".graphiql-{editor} .CodeMirror",
    )
    return value


async def run_in_graphiql(page: Any, query: str) -> None:
    """Types `query` into the editor as a person would, then presses the run button."""
    editor = page.locator(".graphiql-query-editor .CodeMirror")
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Delete")
    await page.keyboard.type(query)
    await page.keyboard.press("Escape")  # closes an autocompletion hint, if one is open
    # CodeMirror closes brackets itself; typing the closing ones steps over them.
    assert " ".join((await editor_value(page, "query-editor")).split()) == query
    await page.locator(".graphiql-execute-button").click()


async def response_containing(page: Any, text: str, seconds: float = 20.0) -> str:
    await page.wait_for_function(
        """(text) => {
            const editor = document.querySelector(".graphiql-response .CodeMirror");
            return editor && editor.CodeMirror.getValue().includes(text);
        }""",
        arg=text,
        timeout=seconds * 1000,
    )
    return await editor_value(page, "response")


@contextlib.asynccontextmanager
async def graphiql_in_chromium(server: ServerProcess) -> AsyncIterator[Any]:
    """A headless Chromium on the server's GraphiQL page, every host but loopback blocked;
    after the block: nothing was asked of another host, the page raised no error, and every
    request (websockets included) went to the server."""
    executable = chromium_path()
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
    )
    elsewhere: list[str] = []
    requested: list[str] = []
    page_errors: list[str] = []

    async def only_loopback(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK or not url.startswith(("http:", "https:")):
            await route.continue_()
        else:
            elsewhere.append(url)
            await route.abort()

    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("request", lambda request: requested.append(request.url))
            page.on("websocket", lambda websocket: requested.append(websocket.url))
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            await page.route("**/*", only_loopback)
            await page.goto(f"{server.url}/graphql", wait_until="load")
            yield page
        finally:
            await browser.close()
    assert elsewhere == []
    assert page_errors == []
    origin = urlsplit(server.url).netloc
    assert requested
    assert all(urlsplit(url).netloc == origin for url in requested), requested


@pytest.mark.slow
async def test_graphiql_runs_a_query_with_other_hosts_blocked(
    server: ServerProcess, raw_conn: asyncpg.Connection
) -> None:
    await insert_tasks(raw_conn, 5, statuses=("CREATED", "CREATED", "ERROR"))
    async with graphiql_in_chromium(server) as page:
        await run_in_graphiql(page, "{ taskCounts { status count } }")
        counts = json.loads(await response_containing(page, "taskCounts"))
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "graphiql.png")
    nonzero = {row["status"]: row["count"] for row in counts["data"]["taskCounts"] if row["count"]}
    assert nonzero == {"CREATED": 4, "ERROR": 1}


@pytest.mark.slow
async def test_graphiql_shows_a_subscription_event_committed_by_raw_sql(
    server: ServerProcess, raw_conn: asyncpg.Connection
) -> None:
    (task_id,) = await new_tasks(raw_conn, 1, queue="graphiql")
    async with graphiql_in_chromium(server) as page:
        await run_in_graphiql(
            page,
            'subscription { taskStatusChanged(filter: {queue: "graphiql"}) '
            "{ taskId status previousStatus } }",
        )
        await wait_for_subscribers(server, 1)
        await set_status(raw_conn, [task_id], StageStatus.QUEUED)
        event = json.loads(await response_containing(page, str(task_id)))
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "graphiql-subscription.png")
    assert event["data"]["taskStatusChanged"] == {
        "taskId": str(task_id), "status": "QUEUED", "previousStatus": "CREATED"
    }
