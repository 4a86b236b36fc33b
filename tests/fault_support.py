"""Faults for the worker tests, injected on loopback between real parts: a PostgreSQL proxy
that loses one reply, an S3 proxy that answers 503 "slow down", and connection kills."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import asyncpg
from sqlalchemy.engine import make_url

WORKER_APPLICATION = "checkmate-worker"


async def terminate_worker_connections(conn: asyncpg.Connection) -> int:
    """pg_terminate_backend every worker connection to conn's database, as a failover does."""
    killed = await conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()",
        WORKER_APPLICATION,
    )
    return int(killed)


async def worker_connection_count(conn: asyncpg.Connection) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = $1",
        WORKER_APPLICATION,
    )
    return int(count)


class PgProxy:
    """A loopback TCP proxy in front of PostgreSQL. Armed with a byte pattern, it forwards the
    first client message that contains it, lets the server answer (so whatever it committed
    stays committed), throws the answer away and closes the client's connection: a reply lost
    on the way back."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self._host = url.query.get("host") or url.host or "127.0.0.1"
        self._port = url.port or 5432
        self.database_url = database_url
        self._pattern: bytes | None = None
        self._skip = 0
        self.dropped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._listen_port = 0
        self._streams: set[asyncio.StreamWriter] = set()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if str(self._host).startswith("/"):
            return await asyncio.open_unix_connection(f"{self._host}/.s.PGSQL.{self._port}")
        return await asyncio.open_connection(str(self._host), self._port)

    def drop_reply_to(self, pattern: bytes, *, skip: int = 0) -> None:
        """Lose the reply to the first client message containing `pattern` after `skip` such
        messages went through."""
        self._pattern = pattern
        self._skip = skip
        self.dropped.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._upstream()
        self._streams.update((writer, up_writer))
        lose_reply = asyncio.Event()

        async def client_to_server() -> None:
            while data := await reader.read(65536):
                if self._pattern is not None and self._pattern in data:
                    if self._skip:
                        self._skip -= 1
                    else:
                        self._pattern = None
                        lose_reply.set()
                up_writer.write(data)
                await up_writer.drain()

        async def server_to_client() -> None:
            while data := await up_reader.read(65536):
                if lose_reply.is_set():
                    # The server processed the message (its answer is here): cut the client.
                    self.dropped.set()
                    return
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.create_task(client_to_server()), asyncio.create_task(server_to_client())]
        with contextlib.suppress(Exception):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for stream in (writer, up_writer):
            stream.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve on a loopback port; yields the database URL through the proxy."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._listen_port = self._server.sockets[0].getsockname()[1]
        url = make_url(self.database_url).set(host="127.0.0.1", port=port, query={})
        try:
            yield url.render_as_string(hide_password=False)
        finally:
            self._server.close()

    def cut(self) -> None:
        """An outage: every open connection dropped, new ones refused (until `restore`)."""
        assert self._server is not None
        self._server.close()
        for stream in self._streams:
            stream.close()
        self._streams.clear()

    async def restore(self) -> None:
        """The database is back, at the same address."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._listen_port)


class SlowDownProxy:
    """A loopback HTTP proxy in front of an S3 server that answers every `every`-th request
    with 503 SlowDown while `faulty`; for a PUT it answers so only after forwarding it, so the
    object was written though the client was told otherwise."""

    def __init__(self, upstream: str, every: int = 3) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.every = every
        self.faulty = True
        self.requests = 0
        self.refused = 0
        # Create-only PUTs (If-None-Match: *) that were written, then answered 503.
        self.refused_creates = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    refuse = proxy.faulty and proxy.requests % proxy.every == 0
                    proxy.refused += refuse
                    if refuse and self.command == "PUT" and "if-none-match" in self.headers:
                        proxy.refused_creates += 1
                if refuse and self.command != "PUT":
                    self._slow_down()
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    reply = upstream.getresponse()
                    payload = reply.read()
                finally:
                    upstream.close()
                if refuse:
                    self._slow_down()
                    return
                self.send_response(reply.status)
                for name, value in reply.getheaders():
                    if name.lower() not in {"content-length", "connection", "transfer-encoding"}:
                        self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _slow_down(self) -> None:
                body = (
                    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                    b"<Message>Please reduce your request rate.</Message></Error>"
                )
                self.send_response(503)
                self.send_header("content-type", "application/xml")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> SlowDownProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
