"""Proxies and corporate TLS: the sender goes where HTTP(S)_PROXY, NO_PROXY or the proxy
option say, through a real forward proxy (proxy.py, a subprocess on 127.0.0.1), to a real
collector, over TLS with a throwaway CA for https:// endpoints.

proxy.py adds ``Via: 1.1 proxy.py ...`` to each request it forwards in the clear, which the
collector records; a CONNECT tunnel is opaque, so for HTTPS the proxy's access log (one
line per client connection, written when it closes) is the evidence.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from support import REPO, ServerProcess, live_sender_pids, wait_for

from mpsender._collector import Collector

pytestmark = pytest.mark.slow

SECRET = "s3cret-Pa55"


class ForwardProxy(ServerProcess):
    """proxy.py on 127.0.0.1, on a port it picks; only ever asked for 127.0.0.1."""

    name = "proxy.py"

    def __init__(self, workdir: Path, basic_auth: str | None = None) -> None:
        workdir.mkdir()
        self.port_file = workdir / "port"
        cmd = [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
               "--port-file", str(self.port_file), "--num-workers", "1", "--num-acceptors", "1",
               "--threaded", "--data-dir", str(workdir / "data")]
        if basic_auth:
            cmd += ["--basic-auth", basic_auth]
        # proxy.py writes a cache under $HOME/.proxy even with --data-dir
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env["HOME"] = str(workdir)
        super().__init__(cmd, env, workdir, workdir / "proxy.log")

    def ready(self) -> bool:
        try:
            return bool(self.port_file.read_text().split())
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_file.read_text().split()[0]}"


@pytest.fixture
def forward_proxy(tmp_path: Path) -> Iterator[Callable[..., ForwardProxy]]:
    """Start proxy.py subprocesses (``basic_auth="user:pass"`` to require credentials);
    killed at teardown."""
    started: list[ForwardProxy] = []

    def start(basic_auth: str | None = None) -> ForwardProxy:
        proxy = ForwardProxy(tmp_path / f"proxy{len(started)}", basic_auth)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.kill()


@pytest.fixture
def tls_collector(tmp_path: Path) -> Iterator[tuple[Collector, Path]]:
    """A collector serving HTTPS with a certificate for 127.0.0.1 from a throwaway CA, and
    that CA's PEM file."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    collector = Collector(tmp_path / "tls.db", ssl_context=server_ctx).start()
    try:
        yield collector, ca_pem
    finally:
        collector.stop()


def _via_proxy(collector: Collector) -> list[bool]:
    """For each request the collector saw: did proxy.py forward it?"""
    return ["proxy.py" in r.headers.get("via", "") for r in collector.requests()]


def _dead_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _track_and_flush(client: object, n: int = 20, timeout: float = 20) -> bool:
    for i in range(n):
        client.track("Proxied", user_id="u", properties={"i": i})  # type: ignore[attr-defined]
    return bool(client.flush(timeout=timeout))  # type: ignore[attr-defined]


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_the_environments_proxy_carries_the_events(
        variable: str, forward_proxy, client_factory, collector: Collector,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY (or http_proxy, ALL_PROXY) in the environment of the process that
    starts the sender, every request goes through that proxy."""
    proxy = forward_proxy()
    monkeypatch.setenv(variable, proxy.url)
    client = client_factory()
    assert _track_and_flush(client)
    assert collector.count() == 20
    assert _via_proxy(collector) and all(_via_proxy(collector)), proxy.output()
    route = client.stats().sender.extra["route"]  # what mpsender status shows
    assert route == f"by the environment: {'all' if variable == 'ALL_PROXY' else 'http'}:// {proxy.url}"


def test_no_proxy_sends_directly(forward_proxy, client_factory, collector: Collector,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint whose host is in NO_PROXY is reached directly, not through HTTP_PROXY."""
    proxy = forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.invalid, 127.0.0.1")
    assert _track_and_flush(client_factory())
    assert collector.count() == 20
    assert _via_proxy(collector) and not any(_via_proxy(collector))


def test_the_proxy_option_overrides_the_environment(
        forward_proxy, client_factory, collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy option is used even where HTTP_PROXY points elsewhere and NO_PROXY lists
    the endpoint; proxy="direct" sends directly despite a dead HTTP_PROXY."""
    proxy = forward_proxy()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_dead_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert _track_and_flush(client_factory(proxy=proxy.url))
    assert collector.count() == 20 and all(_via_proxy(collector))

    monkeypatch.delenv("NO_PROXY")
    assert _track_and_flush(client_factory(proxy="direct", write_key="direct-key"))
    assert collector.count() == 40
    assert _via_proxy(collector)[-1] is False


def test_https_endpoint_through_connect_with_the_ca_bundle(
        forward_proxy, client_factory, tls_collector: tuple[Collector, Path], runtime_dir: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An https:// endpoint behind HTTPS_PROXY is reached through a CONNECT tunnel, its
    certificate verified against ca_bundle."""
    collector, ca_pem = tls_collector
    proxy = forward_proxy()
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    client = client_factory(endpoint=collector.url, ca_bundle=str(ca_pem), linger=0.5)
    assert _track_and_flush(client)
    assert collector.count() == 20
    assert not any(_via_proxy(collector))  # a tunnel: the proxy saw no request, only bytes
    client.shutdown(timeout=10)
    # the sender exits soon after its last client; proxy.py logs a connection when it closes
    assert wait_for(lambda: not live_sender_pids(runtime_dir), 15)
    assert wait_for(lambda: f"CONNECT 127.0.0.1:{collector.port} " in proxy.output(), 15), proxy.output()


def test_tls_through_the_proxy_fails_closed_without_the_ca(
        forward_proxy, client_factory, tls_collector: tuple[Collector, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the CA, the proxied TLS connection is refused and the events kept; with
    SSL_CERT_FILE naming the CA (no ca_bundle), it is trusted."""
    collector, ca_pem = tls_collector
    monkeypatch.setenv("HTTPS_PROXY", forward_proxy().url)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    strict = client_factory(endpoint=collector.url, retry_base=0.05, retry_cap=0.2)
    assert not _track_and_flush(strict, n=3, timeout=1.5)
    stats = strict.stats().sender
    assert "CERTIFICATE_VERIFY_FAILED" in str(stats.last_error), stats
    assert collector.count() == 0 and not stats.dropped

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    trusting = client_factory(endpoint=collector.url, write_key="other-key")
    assert _track_and_flush(trusting, n=3)
    assert collector.count() == 3


def test_proxy_credentials_are_sent_and_never_shown(
        forward_proxy, client_factory, collector: Collector, runtime_dir: str) -> None:
    """A proxy URL's credentials authenticate to the proxy; wrong ones pause delivery
    (HTTP 407, events kept); neither password appears in the sender's files, log, stats
    or ``mpsender status``."""
    proxy = forward_proxy(basic_auth=f"agent:{SECRET}")
    host = proxy.url.removeprefix("http://")
    good = client_factory(proxy=f"http://agent:{SECRET}@{host}")
    assert _track_and_flush(good)
    assert collector.count() == 20 and all(_via_proxy(collector))

    wrong = "Wr0ng-Passw0rd"
    bad = client_factory(proxy=f"http://agent:{wrong}@{host}", write_key="other-key",
                         retry_base=0.05, retry_cap=0.2)
    assert not _track_and_flush(bad, n=3, timeout=1.5)
    stats = bad.stats().sender
    assert stats.last_status == 407 and not stats.dropped
    assert collector.count() == 20

    status = subprocess.run([sys.executable, "-m", "mpsender", "status"],
                            env={**os.environ, "MPSENDER_RUNTIME_DIR": runtime_dir},
                            capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert status.returncode == 0, status.stderr
    assert f"proxy http://***@{host}" in status.stdout  # which proxy, without the secret
    assert f"through http://***@{host} (proxy option)" in status.stdout
    shown = {"stats": repr(stats), "options": repr(bad.options), "status": status.stdout + status.stderr}
    for path in Path(runtime_dir).rglob("*"):
        if path.is_file():  # logs, sender.json, state, spool: everything a sender wrote
            shown[str(path)] = path.read_text(errors="replace")
    assert any("the proxy refused its credentials" in text for text in shown.values())
    for where, text in shown.items():
        assert SECRET not in text and wrong not in text, where
