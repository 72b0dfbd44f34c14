"""Tests of kvmodel.engines.etcd's security: logging in, TLS, and keeping secrets out of sight.

Two members run for the module: one with authentication enabled on plain
HTTP, and one that serves TLS, demands a client certificate and has
authentication enabled too (the set-up the docs recommend). Certificates are
made in the test with the ``openssl`` command.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from etcd_cluster import (
    INSTALL_HINT,
    EtcdCluster,
    TlsFiles,
    etcd_tests_skipped,
    make_tls_files,
    openssl_available,
)

import kvmodel as km
from kvmodel.engines._etcd_transport import Credentials
from kvmodel.engines.base import AtomicWrite, Mutation, MutationKind, ReadRange
from kvmodel.engines.etcd import EtcdAuthError, EtcdEngine, redact_url
from kvmodel.errors import EngineError, InvalidArgumentError

pytestmark = [
    pytest.mark.etcd,
    pytest.mark.skipif(etcd_tests_skipped(), reason=INSTALL_HINT),
]

PASSWORD = "s3cr3t-Pa55/w?rd#@:"
"""Holds every character that must be percent-encoded in a URL."""
QUOTED = quote(PASSWORD, safe="")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if not openssl_available():
        if os.environ.get("KVMODEL_REQUIRE_ETCD"):
            pytest.fail("KVMODEL_REQUIRE_ETCD is set but the openssl command is not installed.")
        pytest.skip("The openssl command is not installed; `apt-get install openssl`.")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[EtcdCluster]:
    """One member on plain HTTP with authentication enabled (root's password is PASSWORD)."""
    with EtcdCluster(1) as c:
        c.enable_auth(PASSWORD)
        yield c


@pytest.fixture(scope="module")
def tls_cluster(tls_files: TlsFiles) -> Iterator[EtcdCluster]:
    """One member serving TLS with --client-cert-auth and authentication enabled."""
    with EtcdCluster(1, tls=tls_files, client_cert_auth=True) as c:
        c.enable_auth(PASSWORD)
        yield c


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _with_login(url: str, user: str = "root", password: str = QUOTED) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{user}:{password}@{rest}"


def _tls_query(tls: TlsFiles, *, ca: Path | None = None, client: bool = True) -> str:
    query = f"?ca_file={quote(str(ca or tls.ca))}"
    if client:
        query += f"&cert_file={quote(str(tls.client_cert))}&key_file={quote(str(tls.client_key))}"
    return query


def _set(engine: EtcdEngine, key: bytes, value: bytes) -> None:
    result = engine.atomic_write(AtomicWrite(mutations=(Mutation(key, MutationKind.SET, value),)))
    assert result is not None and result.ok


def _texts(exc: BaseException) -> list[str]:
    """str and repr of an exception and of every exception chained to it."""
    out: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(out) < 40:
        out += [str(seen), repr(seen), *map(repr, seen.args)]
        seen = seen.__cause__ or seen.__context__
    return out


# -- user and password ---------------------------------------------------------


def test_a_url_with_user_and_password_logs_in(auth_cluster: EtcdCluster, prefix: str) -> None:
    """user:password@ in an etcd:// URL is percent-decoded and logs in, not taken as a host."""
    with km.open_kv(_with_login(auth_cluster.url(prefix))) as kv:
        kv.set(("a",), 1)
        assert kv.get(("a",)).value == 1
        engine = kv._engine
        assert isinstance(engine, EtcdEngine)
        assert engine.transport.endpoints == [("127.0.0.1", auth_cluster.client_ports[0])]
        assert engine.transport.logins == 1


def test_the_password_may_come_as_an_option(auth_cluster: EtcdCluster, prefix: str) -> None:
    """etcd://user@host with password= logs in; the user may be an option too."""
    url = auth_cluster.url(prefix).replace("etcd://", "etcd://root@")
    with km.open_kv(url, password=PASSWORD) as kv:
        kv.set(("a",), 2)
    with EtcdEngine(auth_cluster.endpoints, user="root", password=PASSWORD) as engine:
        assert engine.transport.logins == 1


def test_a_wrong_password_raises_auth_error_naming_the_user(auth_cluster: EtcdCluster) -> None:
    """A refused login is an EtcdAuthError (an EngineError) naming the user, raised at open."""
    with pytest.raises(EtcdAuthError, match="refused to log in the user 'root'") as info:
        EtcdEngine(auth_cluster.endpoints, user="root", password="wrong-password")
    assert isinstance(info.value, EngineError) and info.value.user == "root"
    with pytest.raises(EtcdAuthError, match="'nobody'"):
        EtcdEngine(auth_cluster.endpoints, user="nobody", password=PASSWORD)


def test_no_login_on_a_cluster_with_auth_says_what_to_give(auth_cluster: EtcdCluster) -> None:
    """Without credentials, auth enabled gives an error asking for user= and password=."""
    with pytest.raises(EtcdAuthError, match=r"requires authentication.*user= and password="):
        EtcdEngine(auth_cluster.endpoints)


def test_tokens_etcd_dropped_are_replaced_by_a_fresh_login(auth_cluster: EtcdCluster) -> None:
    """When etcd drops a user's tokens, requests and (restarted) watches log in again and go on."""
    prefix = f"t-{uuid.uuid4().hex[:10]}/".encode()
    engine = EtcdEngine(auth_cluster.endpoints, prefix=prefix, user="root", password=PASSWORD)
    writer = EtcdEngine(auth_cluster.endpoints, prefix=prefix, user="root", password=PASSWORD)
    try:
        _set(engine, b"k", b"1")
        stream = engine.watch([b"k"])
        first = stream.next(timeout=10)
        assert first is not None and first[0] is not None and first[0].value == b"1"
        # Setting a password (even the same one) makes etcd drop the user's
        # tokens, as their running out does; a restart breaks the watch stream.
        auth_cluster.post(0, "/v3/auth/user/changepw", {"name": "root", "password": PASSWORD})
        auth_cluster.kill(0)
        auth_cluster.restart(0)
        auth_cluster.wait_healthy()
        _set(writer, b"k", b"2")  # a stale token: rejected, then a fresh login
        assert writer.transport.logins == 2
        # The watch stream reconnects, is cancelled for its stale token, logs
        # in and resumes from its revision, so it sees the new value.
        for _ in range(20):
            item = stream.next(timeout=10)
            assert item is not None
            if item[0] is not None and item[0].value == b"2":
                break
        else:
            pytest.fail("The watch never saw the commit made after the restart.")
        assert engine.transport.logins == 2
        stream.close()
    finally:
        engine.close()
        writer.close()


def test_a_rejected_token_is_renewed_once_and_the_request_sent_again(
    auth_cluster: EtcdCluster,
) -> None:
    """A token etcd does not know (here a made-up one) is replaced by a new login."""
    with EtcdEngine(auth_cluster.endpoints, user="root", password=PASSWORD) as engine:
        engine.transport._token = "not-a-token.1"
        engine.snapshot_read([ReadRange(b"a", b"b", 1)])
        assert engine.transport.logins == 2
        assert engine.transport._token != "not-a-token.1"


def test_a_user_with_a_role_on_its_prefix_works_there_only(auth_cluster: EtcdCluster) -> None:
    """A user granted read-write on one prefix uses all of kvmodel there; elsewhere is refused."""
    name = f"app-{uuid.uuid4().hex[:6]}"
    auth_cluster.add_user(name, "app-password", prefix=f"{name}/".encode())
    with km.open_kv(_with_login(auth_cluster.url(name), name, "app-password")) as kv:
        kv.set(("x",), "ok", expire_in=60)
        assert kv.atomic().check(kv.get(("x",))).sum(("n",), km.KvU64(1)).commit().ok
        watch = kv.watch([("x",)])
        assert next(iter(watch))[0].value == "ok"
        watch.close()
        kv.enqueue("job")
        engine = kv._engine
        assert isinstance(engine, EtcdEngine)
        message = engine.dequeue_next_message(10)
        assert message is not None
        message.finish(True)
    with pytest.raises(EngineError, match="permission denied"):
        km.open_kv(_with_login(auth_cluster.url("elsewhere"), name, "app-password"))


# -- TLS ---------------------------------------------------------------------------


def test_etcds_urls_speak_tls_with_a_client_certificate_and_login(
    tls_cluster: EtcdCluster, tls_files: TlsFiles, prefix: str
) -> None:
    """The docs' worked example (etcds://, TLS files, a login) serves the Kv, watch and queue."""
    url = _with_login(tls_cluster.url(prefix)) + _tls_query(tls_files)
    with km.open_kv(url) as kv:
        kv.set(("a",), 1)
        watch = kv.watch([("a",)])
        assert next(iter(watch))[0].value == 1
        kv.set(("a",), 2)
        assert next(iter(watch))[0].value == 2
        watch.close()
        kv.enqueue("job")
        engine = kv._engine
        assert isinstance(engine, EtcdEngine)
        message = engine.dequeue_next_message(10)
        assert message is not None
        message.finish(True)
        assert engine.transport.scheme == "https"


def test_tls_options_as_keywords_and_https_endpoints(
    tls_cluster: EtcdCluster, tls_files: TlsFiles
) -> None:
    """EtcdEngine takes https:// endpoints and the TLS files as keyword arguments."""
    with EtcdEngine(
        [f"https://{e}" for e in tls_cluster.endpoints],
        user="root",
        password=PASSWORD,
        ca_file=tls_files.ca,
        cert_file=tls_files.client_cert,
        key_file=tls_files.client_key,
    ) as engine:
        _set(engine, b"kw", b"1")
    url = _with_login(tls_cluster.url("kw"))
    with km.open_kv(
        url,
        ca_file=str(tls_files.ca),
        cert_file=tls_files.client_cert,
        key_file=tls_files.client_key,
    ) as kv:
        kv.set(("b",), 1)


def test_tls_configuration_errors_fail_at_once_with_a_hint(
    tls_cluster: EtcdCluster, auth_cluster: EtcdCluster, tls_files: TlsFiles
) -> None:
    """An untrusted certificate, no client certificate or TLS to a plain member raise at once."""
    login = _with_login(tls_cluster.url())
    with pytest.raises(EngineError, match=r"TLS with etcd at .*CERTIFICATE_VERIFY_FAILED.*ca_file"):
        km.open_kv(login + _tls_query(tls_files, ca=tls_files.other_ca))
    with pytest.raises(EngineError, match=r"TLS with etcd at .*(ALERT|alert).*cert_file"):
        km.open_kv(login + _tls_query(tls_files, client=False))
    plain_as_tls = _with_login(auth_cluster.url().replace("etcd://", "etcds://"))
    with pytest.raises(EngineError, match="TLS with etcd at"):
        km.open_kv(plain_as_tls + _tls_query(tls_files))
    with pytest.raises(EngineError, match=r"etcds://"):
        km.open_kv(login.replace("etcds://", "etcd://"), retry_timeout=0.5)


def test_tls_files_that_cannot_be_loaded_are_named(tmp_path: Path, tls_files: TlsFiles) -> None:
    """A CA or client certificate that cannot be loaded is an InvalidArgumentError naming it."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(InvalidArgumentError, match=r"missing\.pem"):
        EtcdEngine(["127.0.0.1:1"], ca_file=missing)
    with pytest.raises(InvalidArgumentError, match=r"missing\.pem"):
        EtcdEngine(["127.0.0.1:1"], ca_file=tls_files.ca, cert_file=missing)
    with pytest.raises(InvalidArgumentError, match="key_file was given without cert_file"):
        EtcdEngine(["127.0.0.1:1"], key_file=tls_files.client_key)


# -- URLs and options ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("etcd://h:1?password=PW1x", {}, "query parameter 'password'"),
        ("etcd://h:1?ca_file=/ca.pem", {}, "open .* as etcds://"),
        ("etcd://h:1", {"cert_file": "/c.pem"}, "open .* as etcds://"),
        ("etcds://h:1?ca_file=/a&ca_file=/b", {}, "gives ca_file twice"),
        ("etcds://h:1?ca_file=/a", {"ca_file": "/b"}, "both give the ca_file"),
        ("etcd://u:PW1x@h:1", {"password": "PW2x"}, "both give the password"),
        ("etcd://h:1", {"password": "PW1x"}, "without user="),
        ("etcd://u@h:1", {}, "without a password"),
        ("etcd://u:PW1/x@h:1", {}, "percent-encode"),
        ("etcd://u:PW1?x@h:1", {}, "percent-encode"),
        ("etcd://u:PW1#x@h:1", {}, "percent-encode"),
        ("etcd://u:PW1x@", {}, "host:port"),
        ("etcd://u:PW1x@h", {}, "host:port"),
        ("http://u:PW1x@h:1", {}, "not an etcd URL"),
    ],
)
def test_bad_urls_and_options_raise_invalid_argument(
    url: str, options: dict[str, str], message: str
) -> None:
    """URLs and options that cannot work raise InvalidArgumentError, never quoting a password."""
    with pytest.raises(InvalidArgumentError, match=message) as info:
        EtcdEngine.from_url(url, **options)  # type: ignore[arg-type]
    for text in _texts(info.value):
        assert "PW1" not in text and "PW2" not in text, text


def test_endpoints_with_user_information_are_refused_without_echo() -> None:
    """An endpoint "user:password@host:port" passed to EtcdEngine is refused without quoting it."""
    with pytest.raises(InvalidArgumentError, match="user= and password=") as info:
        EtcdEngine([f"root:{PASSWORD}@127.0.0.1:2379"])
    assert not any(PASSWORD in t or "s3cr3t" in t for t in _texts(info.value))
    with pytest.raises(InvalidArgumentError, match="mix http:// and https://"):
        EtcdEngine(["http://127.0.0.1:1", "https://127.0.0.1:2"])


def test_redact_url_hides_the_password_only() -> None:
    """redact_url keeps the user and hosts and replaces the password, whatever it holds."""
    assert redact_url("etcd://root:s3cr3t@h:1,h:2/app") == "etcd://root:***@h:1,h:2/app"
    assert redact_url("etcd://root:a/b@c@h:1/app") == "etcd://root:***@h:1/app"
    assert redact_url("etcd://root@h:1") == "etcd://root@h:1"
    assert redact_url("etcd://h:1/app") == "etcd://h:1/app"
    assert redact_url("etcds://h:1/app?ca_file=/c&x=1&y") == "etcds://h:1/app?ca_file=/c&x=***&y"
    assert redact_url("app.db") == "app.db"


# -- secrets -----------------------------------------------------------------------------


def test_secrets_never_appear_in_errors_reprs_or_logs(
    auth_cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Errors (and causes), reprs of engine, Kv and credentials, and logs hide the password."""
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t"
    url = _with_login(auth_cluster.url("app"), password=secret + "-x")
    failures: list[BaseException] = []
    attempts = [
        lambda: km.open_kv(url),  # wrong password
        lambda: km.open_kv(url, no_such_option=1),
        lambda: km.open_kv(url.replace("@", "/@", 1)),  # an unencoded '/'
        lambda: km.open_kv(url + "?bogus=1"),
        lambda: km.open_kv(url.replace("etcd://", "etcds://"), retry_timeout=0.3),
        lambda: km.open_kv(_with_login("etcd://127.0.0.1:1", password=secret), retry_timeout=0.3),
        lambda: EtcdEngine([f"root:{secret}@127.0.0.1:1"]),
        lambda: EtcdEngine(["127.0.0.1:1"], user="root", password=secret, retry_timeout=0.3),
    ]
    for attempt in attempts:
        with pytest.raises((km.KvError, ValueError)) as info:
            attempt()
        failures.append(info.value)
    assert len(failures) == len(attempts)
    for exc in failures:
        for text in _texts(exc):
            assert secret not in text, text

    real = _with_login(auth_cluster.url("app"))
    with km.open_kv(real) as kv:
        engine = kv._engine
        assert isinstance(engine, EtcdEngine)
        creds = engine.transport.credentials
        assert isinstance(creds, Credentials)
        shown = [repr(kv), str(kv), repr(engine), str(engine), repr(creds), repr(vars(engine))]
        shown += [repr(engine.transport.__dict__)]
        for text in shown:
            assert PASSWORD not in text and QUOTED not in text, text
        assert "user='root'" in repr(engine)
        with pytest.raises(TypeError):
            import pickle

            pickle.dumps(creds)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert secret not in text and PASSWORD not in text, text
