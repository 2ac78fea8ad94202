"""The sender's HTTP client: one tuned connection, through the proxy the user expects.

httpx reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY only when it builds its own
transport; the uploader passes its own (one connection, kept alive, TCP_NODELAY), which
turns that off. So the routes httpx would take are rebuilt here as ``mounts``, each a
transport with the same settings, and httpx still picks the route by its own matching.
The environment read is the sender's, which is a copy of the environment of the
application process that started it (``_spawn.py``).

The ``proxy`` option replaces all of that: every request goes through it, NO_PROXY
included, as with httpx's own ``proxy=`` (mpsender has one endpoint: a proxy given
for it is meant for it). ``proxy="direct"`` sends directly whatever the environment says.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from .._options import PROXY_DIRECT, Options, redact_url
from .._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["HttpSetup", "build_client", "environment_proxies", "tls_context"]

#: the environment variables whose proxies httpx honours, as urllib reads them
_PROXY_KEYS = ("http", "https", "all")


@dataclass(frozen=True, slots=True)
class HttpSetup:
    """The client, and how it routes, said without credentials (for the log)."""

    client: httpx.Client
    route: str
    #: strings that must not leave the sender (proxy passwords): scrubbed from errors
    secrets: tuple[str, ...]


def environment_proxies() -> dict[str, str | None]:
    """The mounts httpx builds from the environment (``httpx._utils.get_environment_proxies``,
    which is private, hence this copy; a unit test keeps the two equal): URL pattern to
    proxy URL, ``None`` for the NO_PROXY patterns that go directly."""
    info = urllib.request.getproxies()
    mounts: dict[str, str | None] = {}
    for scheme in _PROXY_KEYS:
        url = info.get(scheme)
        if url:
            mounts[f"{scheme}://"] = url if "://" in url else f"http://{url}"
    for host in (h.strip() for h in info.get("no", "").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            mounts[host] = None
        elif _is_ipv4(host) or host.lower() == "localhost":
            mounts[f"all://{host}"] = None
        elif _is_ipv6(host):
            mounts[f"all://[{host}]"] = None
        else:
            mounts[f"all://*{host}"] = None
    return mounts


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host.split("/")[0])
    except ValueError:
        return False
    return True


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host.split("/")[0])
    except ValueError:
        return False
    return True


def tls_context(options: Options) -> ssl.SSLContext:
    """One context for every route (loading the CAs is slow, and the same for every transport).

    ``ca_bundle`` replaces the default CAs, as curl's ``--cacert`` does; without it,
    SSL_CERT_FILE / SSL_CERT_DIR as httpx honours them, else certifi's bundle.
    ``verify_tls=False`` is the only way to turn verification off.
    """
    if not options.verify_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if options.ca_bundle:
        return ssl.create_default_context(cafile=options.ca_bundle)
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class _Unusable(httpx.BaseTransport):
    """A route that cannot be built (a SOCKS proxy without httpx[socks], a malformed
    HTTPS_PROXY): every request fails with why, so the events stay in the spool and
    ``mpsender status`` shows the reason, instead of going out by another route."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ProxyError(self.reason, request=request)


def _transport(ctx: ssl.SSLContext, proxy: str) -> httpx.BaseTransport:
    try:
        # an https:// proxy is verified against the same CAs as the endpoint
        proxy_obj = httpx.Proxy(proxy, ssl_context=ctx if proxy.startswith("https:") else None)
        return _tuned(ctx, proxy_obj)
    except (ImportError, ValueError, TypeError, httpx.InvalidURL) as exc:
        # the exception's message may quote the URL, credentials and all: not repeated
        reason = f"cannot use the proxy {redact_url(proxy)}: {type(exc).__name__}"
        if isinstance(exc, ImportError):
            reason += " (a SOCKS proxy needs httpx[socks] in the sender's Python)"
        logger.error("%s; nothing is sent until it is fixed", reason)
        return _Unusable(reason)


def _tuned(ctx: ssl.SSLContext, proxy: httpx.Proxy | None) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(
        verify=ctx,
        proxy=proxy,
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        # small writes (headers, then body) must not wait for a delayed ACK: 40 ms each
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )


def build_client(options: Options, *, transport: httpx.BaseTransport | None = None) -> HttpSetup:
    """The uploader's client: direct, through ``options.proxy``, or routed as httpx would
    route by the environment; every request through ``transport`` when one is given
    (a test's ``httpx.MockTransport``)."""
    if transport is not None:
        client = httpx.Client(timeout=httpx.Timeout(options.request_timeout), transport=transport,
                              headers={"User-Agent": f"mpsender/{__version__}"}, trust_env=False)
        return HttpSetup(client, "through the given transport", ())
    ctx = tls_context(options)
    mounts: dict[str, httpx.BaseTransport | None] = {}
    if options.proxy == PROXY_DIRECT:
        route = "direct (proxy option; the environment's proxies ignored)"
        proxies: Mapping[str, str | None] = {}
    elif options.proxy:
        proxies = {"all://": options.proxy}
        route = f"through {redact_url(options.proxy)} (proxy option)"
    else:
        proxies = environment_proxies()
        shown = ", ".join(f"{k} {redact_url(v) if v else 'direct'}" for k, v in proxies.items())
        route = f"by the environment: {shown}" if proxies else "direct (no proxy in the environment)"
    for pattern, url in proxies.items():
        # None (a NO_PROXY pattern) is the client's own transport: tuned, direct
        mounts[pattern] = None if url is None else _transport(ctx, url)
    client = httpx.Client(
        timeout=httpx.Timeout(options.request_timeout),
        transport=_tuned(ctx, None),
        mounts=mounts,
        headers={"User-Agent": f"mpsender/{__version__}"},
        trust_env=False,  # the environment was read above; nothing else of it applies
    )
    secrets = tuple(s for url in proxies.values() if url for s in _credentials(url))
    return HttpSetup(client, route, secrets)


def _credentials(url: str) -> list[str]:
    try:
        raw = urllib.parse.urlsplit(url).password
    except ValueError:
        return []
    # the password, raw and decoded (an error may quote either); not the user name,
    # which redact_url masks in URLs but which may be a common word elsewhere
    return [s for s in {raw, urllib.parse.unquote(raw or "")} if s and len(s) >= 3]
