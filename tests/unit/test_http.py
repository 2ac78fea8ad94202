"""The sender's HTTP client: routes as httpx would by the environment, or by the proxy
option, with one TLS context; nothing it reports shows a proxy password."""

from __future__ import annotations

import importlib.util
import ssl
from pathlib import Path

import httpx
import pytest
import trustme
from httpx._utils import get_environment_proxies

from mpsender._options import Options
from mpsender._sender._http import build_client, environment_proxies, tls_context

BASE = {"write_key": "k", "endpoint": "http://127.0.0.1:1"}


@pytest.mark.parametrize("env", [
    {},
    {"HTTP_PROXY": "http://127.0.0.1:3128"},
    {"https_proxy": "127.0.0.1:3128", "ALL_PROXY": "socks5://127.0.0.1:1080"},
    {"HTTPS_PROXY": "http://u:p@127.0.0.1:3128",
     "NO_PROXY": "localhost, 127.0.0.1,::1,.example.com,example.org,http://x.test,10.0.0.0/8"},
    {"HTTP_PROXY": "http://127.0.0.1:3128", "no_proxy": "a.test,*"},
])
def test_environment_proxies_match_httpx(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The mounts built from the environment are the ones httpx builds itself (its
    private helper, compared here so that an httpx change shows up)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert environment_proxies() == get_environment_proxies()


def test_route_is_described_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """The route logged at start masks credentials; the password is known as a secret to
    scrub from errors."""
    monkeypatch.setenv("HTTPS_PROXY", "http://agent:hunter22@127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    setup = build_client(Options(**BASE))
    assert "hunter22" not in setup.route and "https:// http://***@127.0.0.1:3128" in setup.route
    assert "all://localhost direct" in setup.route and "hunter22" in setup.secrets
    setup.client.close()
    explicit = build_client(Options(**BASE, proxy="http://agent:hunter%2F22@127.0.0.1:3128"))
    assert set(explicit.secrets) == {"hunter%2F22", "hunter/22"}
    assert explicit.route == "through http://***@127.0.0.1:3128 (proxy option)"
    explicit.client.close()
    direct = build_client(Options(**BASE, proxy="direct"))
    assert direct.route.startswith("direct") and not direct.secrets
    direct.client.close()


def test_a_route_that_cannot_be_built_fails_every_request_with_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SOCKS proxy without httpx[socks] makes requests fail (events stay in the spool)
    with the reason, instead of going out directly."""
    if importlib.util.find_spec("socksio") is not None:
        pytest.skip("socksio is installed: the SOCKS route can be built")
    monkeypatch.setenv("ALL_PROXY", "socks5://agent:hunter22@127.0.0.1:1080")
    setup = build_client(Options(**BASE))
    with pytest.raises(httpx.ProxyError, match=r"httpx\[socks\]") as info:
        setup.client.post("http://127.0.0.1:1/v1/batch", content=b"{}")
    assert "hunter22" not in str(info.value)
    setup.client.close()


def test_tls_context_prefers_ca_bundle_then_ssl_cert_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ca_bundle replaces the default CAs; without it SSL_CERT_FILE does; verify_tls=False
    turns verification off."""
    mine, other = trustme.CA(), trustme.CA()
    mine.cert_pem.write_to_path(str(tmp_path / "mine.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "other.pem"))

    def subjects(ctx: ssl.SSLContext) -> list[object]:
        return [c["subject"] for c in ctx.get_ca_certs()]

    with_bundle = tls_context(Options(**BASE, ca_bundle=str(tmp_path / "mine.pem")))
    from_env = tls_context(Options(**BASE))
    assert len(subjects(with_bundle)) == 1 and subjects(with_bundle) != subjects(from_env)
    assert with_bundle.verify_mode == ssl.CERT_REQUIRED and with_bundle.check_hostname
    off = tls_context(Options(**BASE, verify_tls=False))
    assert off.verify_mode == ssl.CERT_NONE
