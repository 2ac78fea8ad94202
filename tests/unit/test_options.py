"""Options: explicit arguments over MPSENDER_* over defaults; bad values named."""

import logging
import os
from pathlib import Path

import pytest

from mpsender import ConfigurationError
from mpsender._options import Options, env_disabled, resolve_options
from mpsender._paths import (
    default_runtime_dir,
    destination_id,
    prepare_paths,
    resolve_runtime_dir,
    runtime_dir_candidates,
)

BASE = {"write_key": "k", "endpoint": "http://127.0.0.1:1"}


def test_missing_write_key_says_how_to_provide_it() -> None:
    """No write key: a ValueError naming the argument and the environment variable."""
    with pytest.raises(ValueError, match=r"write_key is missing.*MPSENDER_WRITE_KEY"):
        resolve_options({"endpoint": "http://127.0.0.1:1"}, environ={})


def test_missing_endpoint_says_how_to_provide_it() -> None:
    """No endpoint: a ValueError naming the argument and the environment variable."""
    with pytest.raises(ValueError, match=r"endpoint is missing.*MPSENDER_ENDPOINT"):
        resolve_options({"write_key": "k"}, environ={})


def test_environment_supplies_every_option() -> None:
    """MPSENDER_* variables fill options, parsed by type."""
    env = {
        "MPSENDER_WRITE_KEY": "wk", "MPSENDER_ENDPOINT": "https://e.invalid", "MPSENDER_BATCH_SIZE": "7",
        "MPSENDER_FLUSH_INTERVAL": "0.25", "MPSENDER_GZIP": "no", "MPSENDER_FSYNC_INTERVAL": "none",
        "MPSENDER_HEADERS": "X-A: 1; X-B: two", "MPSENDER_FORMAT": "posthog",
    }
    o = resolve_options({}, environ=env)
    assert (o.write_key, o.endpoint, o.batch_size, o.flush_interval, o.gzip, o.format) == (
        "wk", "https://e.invalid", 7, 0.25, False, "posthog")
    assert o.fsync_interval is None
    assert dict(o.headers) == {"X-A": "1", "X-B": "two"}


def test_explicit_argument_wins_over_environment() -> None:
    """An explicit argument overrides the environment."""
    o = resolve_options({**BASE, "batch_size": 5}, environ={"MPSENDER_BATCH_SIZE": "9"})
    assert o.batch_size == 5


def test_bad_environment_value_warns_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    """A bad MPSENDER_* value logs a warning naming it and the default is used."""
    with caplog.at_level(logging.WARNING, logger="mpsender"):
        o = resolve_options(BASE, environ={"MPSENDER_BATCH_SIZE": "lots", "MPSENDER_LINGER": "-3"})
    assert (o.batch_size, o.linger) == (Options.__dataclass_fields__["batch_size"].default, 30.0)  # the defaults
    text = caplog.text
    assert "MPSENDER_BATCH_SIZE" in text and "MPSENDER_LINGER" in text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be a positive int"),
        ("batch_size", True, "batch_size must be a positive int"),
        ("format", "xml", "format must be one of segment, posthog, json"),
        ("endpoint", "ftp://x", "endpoint must start with http"),
        ("flush_interval", -1.0, "flush_interval must be a positive number of seconds"),
        ("linger", float("nan"), "linger must be a number of seconds"),
        ("on_error", "not_an_import_path", "on_error must be an import path"),
        ("max_message_bytes", 10_000_000, "must not exceed batch_bytes"),
        ("path", "v1/batch", "path must start with '/'"),
    ],
)
def test_bad_explicit_argument_raises_naming_the_field(name: str, value: object, message: str) -> None:
    """A bad explicit option raises ConfigurationError (a ValueError) naming the field."""
    with pytest.raises(ConfigurationError, match=message):
        resolve_options({**BASE, name: value}, environ={})


def test_unknown_option_is_named() -> None:
    """A misspelt option is refused with its name."""
    with pytest.raises(ConfigurationError, match="unknown option.*batchsize"):
        resolve_options({**BASE, "batchsize": 3}, environ={})


@pytest.mark.parametrize("raw", ["1", "true", "YES", "on"])
def test_disabled_values(raw: str) -> None:
    """MPSENDER_DISABLED accepts 1/true/yes/on in any case."""
    assert env_disabled({"MPSENDER_DISABLED": raw})


def test_disabled_needs_no_key() -> None:
    """A disabled client needs neither a key nor an endpoint."""
    assert resolve_options({"disabled": True}, environ={}).disabled


def test_destination_id_separates_destinations() -> None:
    """Same destination, same id; another key, endpoint or format, another id."""
    a = Options(**BASE)
    assert destination_id(a) == destination_id(Options(**BASE, batch_size=3))
    assert destination_id(a) != destination_id(Options(write_key="other", endpoint=BASE["endpoint"]))
    assert destination_id(a) != destination_id(Options(**{**BASE, "endpoint": "http://127.0.0.1:2"}))
    assert destination_id(a) != destination_id(Options(**BASE, format="json"))


def test_runtime_dir_too_long_for_a_socket_is_refused(tmp_path: Path) -> None:
    """A runtime_dir given explicitly whose socket path would not fit in sun_path is named."""
    long_dir = tmp_path / ("x" * 120)
    with pytest.raises(ConfigurationError, match="too long.*MPSENDER_RUNTIME_DIR"):
        prepare_paths(Options(**BASE, runtime_dir=str(long_dir)))


def test_the_first_usable_runtime_dir_is_taken_and_the_rest_left_alone(runtime_dir: str) -> None:
    """Places that are too long, not directories or not ours are passed over; the first
    usable one is made (0700); the ones after it are not touched."""
    tmp_path = Path(runtime_dir)  # a short path whatever TMPDIR is: only the long places are long
    squat = tmp_path / "squat"
    squat.write_text("")
    places = [str(tmp_path / ("x" * 120) / "rt"), str(squat), str(tmp_path / "ok"), str(tmp_path / "later")]
    assert resolve_runtime_dir(None, candidates=places) == places[2]
    assert (tmp_path / "ok").stat().st_mode & 0o777 == 0o700
    assert not (tmp_path / "later").exists() and not (tmp_path / ("x" * 120)).exists()
    assert resolve_runtime_dir(str(tmp_path / "given"), candidates=places) == str(tmp_path / "given")


def test_no_usable_runtime_dir_names_every_place_and_the_variable(runtime_dir: str) -> None:
    """When no place can be used, the error says why for each and names MPSENDER_RUNTIME_DIR."""
    tmp_path = Path(runtime_dir)  # a short path whatever TMPDIR is: only the long places are long
    squat = tmp_path / "squat"
    squat.write_text("")
    places = [str(tmp_path / ("x" * 120)), str(squat / "rt")]
    with pytest.raises(ConfigurationError) as info:
        resolve_runtime_dir(None, candidates=places)
    message = str(info.value)
    assert "MPSENDER_RUNTIME_DIR" in message and "too long" in message and "Not a directory" in message


def test_the_default_runtime_dir_comes_first_and_xdg_runtime_dir_next(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    """Candidates: <tmp>/mpsender-<uid>, then $XDG_RUNTIME_DIR/mpsender, then short fixed places."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    places = runtime_dir_candidates()
    assert places[0] == default_runtime_dir()
    assert places[0].endswith(f"mpsender-{os.getuid()}")
    assert places[1] == str(tmp_path / "xdg" / "mpsender")
    assert f"/tmp/mpsender-{os.getuid()}" in places


def test_proxy_and_ca_bundle_come_from_the_environment(tmp_path) -> None:
    """MPSENDER_PROXY and MPSENDER_CA_BUNDLE fill the options; an empty value means unset."""
    import trustme

    pem = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(pem))
    o = resolve_options({}, environ={**_ENV_BASE, "MPSENDER_PROXY": "http://127.0.0.1:3128",
                                     "MPSENDER_CA_BUNDLE": str(pem)})
    assert (o.proxy, o.ca_bundle) == ("http://127.0.0.1:3128", str(pem))
    assert resolve_options({}, environ={**_ENV_BASE, "MPSENDER_PROXY": " "}).proxy is None


_ENV_BASE = {"MPSENDER_WRITE_KEY": "k", "MPSENDER_ENDPOINT": "http://127.0.0.1:1"}


@pytest.mark.parametrize("proxy", ["ftp://127.0.0.1:21", "127.0.0.1:3128", "http://",
                                   "http://agent:hunter22@127.0.0.1:port"])
def test_bad_proxy_is_named_without_its_password(proxy: str) -> None:
    """A proxy that is not an http/https/socks5 URL raises naming the field; the message
    masks the credentials."""
    with pytest.raises(ConfigurationError, match="proxy must be a URL") as info:
        Options(**BASE, proxy=proxy)
    assert "hunter22" not in str(info.value)


def test_bad_proxy_in_the_environment_warns_without_its_password(caplog: pytest.LogCaptureFixture) -> None:
    """A bad MPSENDER_PROXY is ignored with a warning that does not show the password."""
    with caplog.at_level(logging.WARNING, logger="mpsender"):
        o = resolve_options({}, environ={**_ENV_BASE, "MPSENDER_PROXY": "ftp://agent:hunter22@127.0.0.1"})
    assert o.proxy is None
    assert "MPSENDER_PROXY" in caplog.text and "hunter22" not in caplog.text


def test_proxy_credentials_stay_out_of_repr_and_the_shown_destination() -> None:
    """repr() leaves the proxy out; the destination shown by logs and status masks it."""
    o = Options(**{**BASE, "endpoint": "https://user:epass@127.0.0.1:1"},
                proxy="http://agent:hunter22@127.0.0.1:3128")
    assert "hunter22" not in repr(o)
    shown = o.redacted_endpoint()
    assert "hunter22" not in shown and "epass" not in shown
    assert "proxy http://***@127.0.0.1:3128" in shown and "https://***@127.0.0.1:1" in shown


def test_ca_bundle_is_checked_and_made_absolute(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ca_bundle must be a PEM file of certificates; a relative path is resolved where
    Options is built (the sender runs in /); with verify_tls=False it is refused."""
    import trustme

    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "not.pem").write_text("hello")
    monkeypatch.chdir(tmp_path)
    assert Options(**BASE, ca_bundle="ca.pem").ca_bundle == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigurationError, match="ca_bundle .*not.pem.* is not a readable PEM"):
        Options(**BASE, ca_bundle="not.pem")
    with pytest.raises(ConfigurationError, match="ca_bundle .* is not a readable PEM"):
        Options(**BASE, ca_bundle="missing.pem")
    with pytest.raises(ConfigurationError, match="ca_bundle is set but verify_tls is False"):
        Options(**BASE, ca_bundle="ca.pem", verify_tls=False)


# --- OpenTelemetry's exporter variables (the OTLP formats) --------------------------------------


def test_otlp_takes_the_endpoint_and_headers_an_otel_deployment_exports() -> None:
    """format otlp with no endpoint: OTEL_EXPORTER_OTLP_ENDPOINT is the base URL (the format's
    /v1/logs is appended), its headers are name=value pairs, percent-decoded and stripped."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example:4318",
           "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr%3Dt%2C1 , X-Scope-OrgID = tenant-1,"}
    for fmt in ("otlp", "otlp-proto"):
        o = resolve_options({"format": fmt}, environ=env)
        assert (o.endpoint, o.path) == ("https://otel.example:4318", None)
        assert dict(o.headers) == {"api-key": "s3cr=t,1", "X-Scope-OrgID": "tenant-1"}


def test_the_logs_signal_variables_replace_the_generic_ones() -> None:
    """OTEL_EXPORTER_OTLP_LOGS_ENDPOINT is the whole URL, path and all; the LOGS headers
    replace the generic ones whole (as OTel's SDKs read them), not entry by entry."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318", "OTEL_EXPORTER_OTLP_HEADERS": "a=1,b=2",
           "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4318/custom/v1/logs",
           "OTEL_EXPORTER_OTLP_LOGS_HEADERS": "b=3"}
    o = resolve_options({"format": "otlp"}, environ=env)
    assert (o.endpoint, o.path, dict(o.headers)) == ("http://logs:4318", "/custom/v1/logs", {"b": "3"})
    bare = resolve_options({"format": "otlp"}, environ={"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4318"})
    assert (bare.endpoint, bare.path) == ("http://logs:4318", "/")  # as it is: no /v1/logs added


def test_what_mpsender_is_told_wins_over_otel_variables() -> None:
    """An endpoint argument or MPSENDER_ENDPOINT wins over the OTel endpoint (and a given path
    over the LOGS URL's); a headers entry replaces an OTel header of the same name in any case."""
    env = {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://otel:4318/p", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=otel,x=1"}
    o = resolve_options({"format": "otlp", "endpoint": "http://mine:1", "headers": {"API-KEY": "mine"}}, environ=env)
    assert (o.endpoint, o.path, dict(o.headers)) == ("http://mine:1", None, {"x": "1", "API-KEY": "mine"})
    o = resolve_options({"format": "otlp"}, environ={**env, "MPSENDER_ENDPOINT": "http://mpsender-env:2",
                                                     "MPSENDER_HEADERS": "Api-Key: from-mpsender-env"})
    assert (o.endpoint, dict(o.headers)) == ("http://mpsender-env:2", {"x": "1", "Api-Key": "from-mpsender-env"})
    o = resolve_options({"format": "otlp", "path": "/mine"}, environ=env)
    assert (o.endpoint, o.path) == ("http://otel:4318", "/mine")


def test_otel_variables_are_for_the_otlp_formats_only() -> None:
    """Segment, PostHog and json do not read them: no endpoint is still an error there."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318", "OTEL_EXPORTER_OTLP_HEADERS": "a=1"}
    for fmt in ("segment", "posthog", "json"):
        with pytest.raises(ConfigurationError, match=r"endpoint is missing.*MPSENDER_ENDPOINT\"?$"):
            resolve_options({"format": fmt, "write_key": "k"}, environ=env)
    with pytest.raises(ConfigurationError, match=r"MPSENDER_ENDPOINT \(or OTEL_EXPORTER_OTLP_ENDPOINT\)"):
        resolve_options({"format": "otlp"}, environ={})


@pytest.mark.parametrize(("name", "raw", "why"), [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4318", "not an http:// or https:// URL"),
    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://otel:4318/v1/logs?tenant=1", "without a query"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "api-key", "entry 1 is not name=value"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "ok=1,bad name=2", "entry 2 is not name=value"),
    ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x=a%0Ab", "'x' has a line break"),
])
def test_a_bad_otel_variable_is_named_in_a_warning_and_ignored(name: str, raw: str, why: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """As a bad MPSENDER_* value: a warning naming the variable and what is wrong (never a
    header's value), and the setting as if it were unset: a bad endpoint leaves none (the
    error says how to give one), bad headers add none."""
    with caplog.at_level(logging.WARNING, logger="mpsender"):
        if "ENDPOINT" in name:
            with pytest.raises(ConfigurationError, match="endpoint is missing"):
                resolve_options({"format": "otlp"}, environ={name: raw})
        else:
            o = resolve_options({"format": "otlp", "endpoint": "http://e:1"}, environ={name: raw})
            assert dict(o.headers) == {}
    assert name in caplog.text and why in caplog.text, caplog.text
    assert "a%0Ab" not in caplog.text and "a\nb" not in caplog.text


def test_otlp_resource_attributes_come_from_otel_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolved in the application for the OTLP formats: OTEL_RESOURCE_ATTRIBUTES (percent-
    decoded), whose service.name names the service unless OTEL_SERVICE_NAME or service_name
    does; given resource_attributes replace the variable's; the other formats keep None."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES",
                       "deployment.environment=prod,k8s.pod.name=shop-7f9%2C1 , service.name=from-attrs")
    o = resolve_options({"format": "otlp", "endpoint": "http://e:1"}, environ={})
    assert dict(o.resource_attributes or {}) == {
        "deployment.environment": "prod", "k8s.pod.name": "shop-7f9,1", "service.name": "from-attrs"}
    assert o.service_name == "from-attrs"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-otel-service-name")
    assert resolve_options({"format": "otlp", "endpoint": "http://e:1"}, environ={}).service_name == \
        "from-otel-service-name"
    given = resolve_options({"format": "otlp-proto", "endpoint": "http://e:1", "service_name": "mine",
                             "resource_attributes": {"team": "payments", "shard": 3}}, environ={})
    assert (given.service_name, dict(given.resource_attributes or {})) == ("mine", {"team": "payments", "shard": 3})
    assert resolve_options(BASE, environ={}).resource_attributes is None  # segment: nothing read


def test_resource_attributes_from_mpsender_env_and_bad_values(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """MPSENDER_RESOURCE_ATTRIBUTES takes OTel's form; a bad OTEL_RESOURCE_ATTRIBUTES is named
    in a warning and ignored; a bad explicit value is a ConfigurationError naming the key."""
    o = resolve_options({"format": "otlp", "endpoint": "http://e:1"},
                        environ={"MPSENDER_RESOURCE_ATTRIBUTES": "region=eu-west-1"})
    assert dict(o.resource_attributes or {}) == {"region": "eu-west-1"}
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "a=1,just-a-key")
    with caplog.at_level(logging.WARNING, logger="mpsender"):
        o = resolve_options({"format": "otlp", "endpoint": "http://e:1"}, environ={})
    assert dict(o.resource_attributes or {}) == {}
    assert "OTEL_RESOURCE_ATTRIBUTES" in caplog.text and "entry 2 is not name=value" in caplog.text
    with pytest.raises(ConfigurationError, match=r"resource_attributes\['bad'\] must be a str, bool, int or float"):
        resolve_options({"format": "otlp", "endpoint": "http://e:1", "resource_attributes": {"bad": [1]}}, environ={})


def test_resource_attributes_are_part_of_an_otlp_destination() -> None:
    """Two services with different resources get two senders; none given keeps the id of before."""
    base = {"format": "otlp", "endpoint": "http://e:1", "service_name": "s"}
    plain = Options(**base, resource_attributes={})
    assert destination_id(plain) == destination_id(Options(**base, resource_attributes={}))
    assert destination_id(Options(**base, resource_attributes={"region": "eu"})) != destination_id(plain)
    assert destination_id(Options(**base, resource_attributes={"region": "eu"})) != \
        destination_id(Options(**base, resource_attributes={"region": "us"}))
