"""Real servers on loopback for the remote-slide tests and benchmark (issue 24): an S3-protocol
server (moto's standalone server), a read-only web server over a folder (python's
``http.server`` with byte ranges, as every production server has them), and a TCP proxy that
adds a fixed delay to every request (what a distant store costs). Nothing here is a mock: the
clients under test (s3fs, aiohttp through zarr's FsspecStore) speak to them over sockets.

Everything binds 127.0.0.1 and stops with its context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["DelayProxy", "MotoServer", "environment", "free_port", "http_server", "moto_env",
           "serve_subprocess", "upload_tree"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def moto_env() -> dict[str, str]:
    """Credentials and region a moto server accepts (any non-empty pair), as environment
    variables: the client finds them where it finds real ones."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside, restored after (credentials for a test
    server, found where a client finds real ones)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class MotoServer:
    """moto's S3-protocol server on 127.0.0.1: in a thread of this process (tests: its buckets
    survive :meth:`stop` and :meth:`start` on the same port, as a real store survives a
    network fault), or in a process of its own (benchmarks: it does not share this process's
    interpreter lock with the client being measured)."""

    port: int = 0
    subprocess: bool = False
    _server: Any = field(default=None, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> MotoServer:
        if not self.port:
            self.port = free_port()
        if self.subprocess:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for_port(self.port, 30.0)
        else:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port,
                                              verbose=False)
            self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> MotoServer:  # noqa: PYI034 -- Self needs 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A boto3 S3 client for this server (the tests' bucket maker)."""
        import boto3

        env = moto_env()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _wait_for_port(port: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no server came up on {LOOPBACK}:{port} in {timeout:g} s")


def upload_tree(client: Any, folder: str | os.PathLike, bucket: str, prefix: str) -> int:
    """Put every file under ``folder`` at ``s3://bucket/prefix/<relative path>``; the number
    of objects."""
    n = 0
    root = Path(folder)
    for p in sorted(root.rglob("*")):
        if p.is_file():
            key = "/".join([prefix.strip("/"), *p.relative_to(root).parts]).lstrip("/")
            client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
            n += 1
    return n


class _RangeHandler(SimpleHTTPRequestHandler):
    """``http.server``'s file handler (GET and HEAD only: read-only) with single byte ranges
    (``bytes=a-b``, ``a-``, ``-n``), which stores are read with."""

    _range = re.compile(r"^bytes=(\d*)-(\d*)$")
    protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self):  # type: ignore[override]
        spec = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not spec or os.path.isdir(path):
            return super().send_head()
        m = self._range.match(spec.strip())
        try:
            f = open(path, "rb")  # noqa: SIM115 -- handed to the base class, which closes it
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        a, b = (m.group(1), m.group(2)) if m else ("", "")
        if not m or (a == "" and b == ""):
            start, end = 0, size - 1
        elif a == "":
            start, end = max(0, size - int(b)), size - 1
        else:
            start, end = int(a), min(size - 1, int(b)) if b else size - 1
        if start >= size or start > end:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f.seek(start)
        import io

        body = io.BytesIO(f.read(end - start + 1))
        f.close()
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        return body


@contextlib.contextmanager
def http_server(folder: str | os.PathLike, port: int = 0) -> Iterator[str]:
    """Serve ``folder`` read-only on 127.0.0.1 (threads); yields its base URL."""
    handler = partial(_RangeHandler, directory=str(folder))
    httpd = ThreadingHTTPServer((LOOPBACK, port), handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, name="http-server", daemon=True)
    t.start()
    try:
        yield f"http://{LOOPBACK}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds every chunk the client sends for ``delay`` seconds
    before passing it on: each HTTP request (one write) arrives ``delay`` later, as over a
    link with that much latency; answers pass straight back. Counts the requests it held
    (:attr:`requests`), so a benchmark can say how many one glimpse sent."""

    def __init__(self, target_port: int, delay: float):
        self.target_port, self.delay = int(target_port), float(delay)
        self.requests = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    delay: float) -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                if delay:
                    self.requests += 1
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w, self.delay),
                             self._pipe(up_r, writer, 0.0))

    def __enter__(self) -> DelayProxy:  # noqa: PYI034 -- Self needs 3.11
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def serve() -> None:
            self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="delay-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)


def serve_subprocess(*args: str) -> tuple[subprocess.Popen, int]:
    """Run ``python -m ram_wsi.bench.servers ARGS --port P`` (a web server or a delay proxy
    in a process of its own, so that a benchmark's client does not share its CPU time);
    returns the process and its port once it listens."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ram_wsi.bench.servers", *args,
                             "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_port(port, 30.0)
    return proc, port


def _main(argv: list[str] | None = None) -> int:
    """``http FOLDER --port P`` or ``proxy TARGET_PORT DELAY_S --port P``: serve until killed."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ram_wsi.bench.servers")
    ap.add_argument("kind", choices=["http", "proxy"])
    ap.add_argument("args", nargs="+")
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args(argv)
    if a.kind == "http":
        handler = partial(_RangeHandler, directory=a.args[0])
        httpd = ThreadingHTTPServer((LOOPBACK, a.port), handler)
        httpd.daemon_threads = True
        httpd.serve_forever()
        return 0
    proxy = DelayProxy(int(a.args[0]), float(a.args[1]))

    async def run() -> None:
        server = await asyncio.start_server(proxy._handle, LOOPBACK, a.port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
