"""Access tokens, limits and headers: what strangers and abusers get."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from .conftest import Api, error_of
from .servers import free_port, server_log, start
from .wsclient import ws_url

TOKEN = "s3cret-Token_value.42"
ENDPOINTS = [
    ("POST", "/api/metrics/track?user_id=u&action=a", None, 200),
    ("POST", "/api/metrics/track/batch", [{"user_id": "u", "action": "a"}], 200),
    ("GET", "/api/metrics/activities", None, 200),
    ("GET", "/api/metrics/summary", None, 200),
    ("GET", "/api/metrics/export?format=ndjson", None, 200),
    ("GET", "/api/metrics/nope", None, 404),
]


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN)
@pytest.mark.parametrize("method,path,body,ok", ENDPOINTS)
async def test_token_is_required_when_set(
    api: Api, service: Any, method: str, path: str, body: Any, ok: int
) -> None:
    for headers, code in (
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, ok),
    ):
        response = await api.request(method, path, body=body, headers=headers)
        assert response.code == code, headers
        if code == 401:
            assert error_of(response)["status"] == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert service.last_id == 0  # refused requests record nothing


@pytest.mark.gen_test
@pytest.mark.parametrize("method,path,body,ok", ENDPOINTS)
async def test_everything_is_open_without_a_token(
    api: Api, method: str, path: str, body: Any, ok: int
) -> None:
    assert (await api.request(method, path, body=body)).code == ok


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN)
async def test_dashboard_page_and_assets_need_no_token(api: Api) -> None:
    page = await api.request("GET", "/api/ui-dashboard/metrics-dashboard-ui")
    assert page.code == 200
    asset = await api.request("GET", "/static/dashboard.css")
    assert asset.code == 200


@pytest.mark.gen_test
@pytest.mark.settings(api_token=TOKEN)
async def test_live_feed_takes_the_token_as_header_or_subprotocol(
    http_server: Any, base_url: str
) -> None:
    for attempt in ({}, {"Authorization": "Bearer nope"}):
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(ws_url(base_url), headers=attempt))
        assert refused.value.code == 401
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(ws_url(base_url), subprotocols=["tracker", "bearer.nope"])
    assert refused.value.code == 401

    by_header = await websocket_connect(
        HTTPRequest(ws_url(base_url), headers={"Authorization": f"Bearer {TOKEN}"})
    )
    by_protocol = await websocket_connect(
        ws_url(base_url), subprotocols=["tracker", f"bearer.{TOKEN}"]
    )
    assert by_protocol.selected_subprotocol == "tracker"  # the token is never echoed back
    for conn in (by_header, by_protocol):
        assert json.loads(await conn.read_message())["type"] == "hello"
        conn.close()


def test_token_never_reaches_the_access_log() -> None:
    port = free_port()
    proc, _ = start("--port", str(port), "--api-token", TOKEN, "--access-log", "1")
    try:
        base = f"http://127.0.0.1:{port}"
        for token in (TOKEN, "wrong-token-guess"):
            request = urllib.request.Request(
                base + "/api/metrics/track?user_id=u&action=a",
                method="POST",
                headers={"Authorization": f"Bearer {token}"},
            )
            try:
                urllib.request.urlopen(request, timeout=5).read()
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        proc.terminate()
        proc.wait(timeout=10)
        err = server_log(proc)
    finally:
        proc.kill()
        proc.wait()
    assert "POST /api/metrics/track" in err  # the access log is on...
    assert TOKEN not in err and "wrong-token-guess" not in err  # ...and holds no token


def test_non_loopback_host_without_token_warns() -> None:
    proc, _ = start("--host", "0.0.0.0", "--port", str(free_port()))
    proc.terminate()
    proc.wait(timeout=10)
    assert "without --api-token" in server_log(proc)
    quiet, _ = start("--port", str(free_port()))
    quiet.terminate()
    quiet.wait(timeout=10)
    assert "without --api-token" not in server_log(quiet)


@pytest.mark.gen_test
@pytest.mark.settings(ws_max_clients=2)
async def test_live_clients_past_the_limit_get_503(http_server: Any, base_url: str, hub) -> None:
    first = await websocket_connect(ws_url(base_url))
    second = await websocket_connect(ws_url(base_url))
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(ws_url(base_url))
    assert refused.value.code == 503
    first.close()
    second.close()


@pytest.mark.gen_test
@pytest.mark.settings(ws_max_message_size=100)
async def test_oversized_client_message_closes_with_1009(http_server: Any, base_url: str) -> None:
    conn = await websocket_connect(ws_url(base_url))
    await conn.read_message()  # hello
    await conn.write_message("x" * 101)
    assert await conn.read_message() is None
    assert conn.close_code == 1009


@pytest.mark.gen_test
async def test_dashboard_sends_security_headers(api: Api) -> None:
    page = await api.request("GET", "/api/ui-dashboard/metrics-dashboard-ui")
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    asset = await api.request("GET", "/static/dashboard.js")
    assert asset.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test
async def test_api_readers_are_not_cached_or_sniffed(api: Api) -> None:
    recorded = await api.track("?user_id=a&action=b")
    assert recorded.code == 200
    assert recorded.headers["Content-Type"] == "application/json; charset=UTF-8"
    for path in (
        "/api/metrics/activities",
        "/api/metrics/summary",
        "/api/metrics/export?format=ndjson",
        "/api/metrics/nothing-here",
    ):
        response = await api.request("GET", path)
        assert response.headers["Cache-Control"] == "no-store", path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
    refused = await api.track("?user_id=a")
    assert refused.code == 400 and refused.headers["Cache-Control"] == "no-store"
