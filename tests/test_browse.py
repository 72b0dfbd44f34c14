"""Tests of ``kvmodel browse`` over HTTP (kvmodel.cli.browse: _data, _app, _server, _command).

The pages are requested with Starlette's TestClient (as a browser would,
cookie included) on every engine; the live streams, the access log and the
command itself run under the real hypercorn server. tests/test_browse_chromium.py
drives the same pages in a real browser.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("starlette", reason="the browse extra is not installed")
pytest.importorskip("jinja2", reason="the browse extra is not installed")
import kvmodel as km
from kvmodel.cli.browse import (
    ThreadedServer,
    _data,
    create_app,
)

TOKEN = "test-token-0123456789"
SCRIPT_TAG = "<script>alert('stored')</script>"

_RUNNING: list[ThreadedServer] = []
_CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()
    while _RUNNING:
        _RUNNING.pop().stop()


def bare(kv: km.Kv, **options: Any) -> httpx.Client:
    """A client of a new server on ``kv`` that has not presented the token."""
    app = create_app(kv, token=TOKEN, store_name="test store", **options)
    server = ThreadedServer(app, token=TOKEN).start()
    _RUNNING.append(server)
    c = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    _CLIENTS.append(c)
    c.port = server.port  # type: ignore[attr-defined]
    return c


def client(kv: km.Kv, **options: Any) -> httpx.Client:
    """A client that has presented the token once (so it holds the cookie)."""
    c = bare(kv, **options)
    first = c.get(f"/tree?token={TOKEN}")
    assert first.status_code == 303
    return c


def post(c: httpx.Client, path: str, data: dict[str, str]) -> httpx.Response:
    return c.post(path, data=data, headers={"origin": str(c.base_url).rstrip("/")})


def fill(kv: km.Kv) -> None:
    kv.set(("users", "ada"), {"name": "Ada", "tag": SCRIPT_TAG})
    kv.set(("users", "bob"), km.KvU64(7))
    kv.set(("users", "eve"), b"\x00\xff", expire_in=3600)
    kv.set(("events", 1), datetime(2024, 5, 1, 12, 0, tzinfo=UTC))
    kv.set(("events", 2, "sub"), "deep")


# ---------------------------------------------------------------------------
# The token, the host, the origin


def test_the_token_in_the_url_becomes_a_strict_httponly_cookie_and_leaves_the_url(
    kv: km.Kv,
) -> None:
    """?token= answers a redirect to the same page without it and sets the cookie."""
    c = bare(kv)
    answer = c.get(f"/entries?prefix=users&token={TOKEN}&limit=5")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/entries?prefix=users&limit=5"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"kvmodel_browse_{c.port}={TOKEN};")  # type: ignore[attr-defined]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert c.get("/entries?prefix=users").status_code == 200


def test_without_the_token_nothing_is_served(kv: km.Kv) -> None:
    """No cookie or a wrong token: 403 with a sentence; no data in the answer."""
    kv.set(("secret",), "hidden value")
    c = bare(kv)
    for path in ("/tree", "/entries", "/entry?key=secret", "/events/entry?key=secret"):
        answer = c.get(path)
        assert answer.status_code == 403
        assert "open the URL that kvmodel browse printed" in answer.text
        assert "hidden value" not in answer.text
    wrong = c.get("/tree?token=guess")
    assert wrong.status_code == 403
    assert "not the one this server printed" in wrong.text
    c.cookies.set(f"kvmodel_browse_{c.port}", "guess")  # type: ignore[attr-defined]
    assert c.get("/tree").status_code == 403


def test_a_loopback_server_refuses_other_host_names(kv: km.Kv) -> None:
    """A Host other than a loopback name (DNS rebinding) is refused, token or not."""
    c = client(kv)
    answer = c.get("/tree", headers={"host": "evil.example"})
    assert answer.status_code == 421
    assert "127.0.0.1 or localhost" in answer.text


def test_a_post_from_another_origin_changes_nothing(kv: km.Kv) -> None:
    """A write with a foreign Origin, or none, is refused even with the cookie."""
    kv.set(("k",), 1)
    stamp = kv.get(("k",)).versionstamp or ""
    c = client(kv, write=True)
    form = {"key": "k", "value": "2", "expected": stamp, "form": "text"}
    foreign = c.post("/entry/set", data=form, headers={"origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert "came from another site" in foreign.text
    assert c.post("/entry/set", data=form).status_code == 403  # no Origin, no Referer
    own = str(c.base_url).rstrip("/")
    cross = c.post("/entry/set", data=form, headers={"origin": own, "sec-fetch-site": "cross-site"})
    assert cross.status_code == 403
    assert kv.get(("k",)).value == 1


def test_read_only_refuses_writes_and_shows_no_forms(kv: km.Kv) -> None:
    """Without --write the write endpoints answer 403 and the pages have no edit form."""
    kv.set(("k",), 1)
    c = client(kv)
    page = c.get("/entry?key=k")
    assert 'action="/entry/set"' not in page.text
    assert "read-only" in page.text
    stamp = kv.get(("k",)).versionstamp or ""
    refused = post(c, "/entry/set", {"key": "k", "value": "2", "expected": stamp})
    assert refused.status_code == 403
    assert "start kvmodel browse with --write" in refused.text
    assert post(c, "/entry/delete", {"key": "k", "expected": stamp}).status_code == 403
    assert kv.get(("k",)).value == 1


def test_pages_carry_a_strict_content_security_policy(kv: km.Kv) -> None:
    """Every page forbids inline script, framing and referrers to other sites."""
    c = client(kv)
    headers = c.get("/tree").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cache-control"] == "no-store"


# ---------------------------------------------------------------------------
# What the pages show, on every engine


def test_the_tree_counts_keys_and_bytes_per_child(kv: km.Kv) -> None:
    """The top level lists each first part with its keys and bytes; a level below too."""
    fill(kv)
    level = _data.tree_level(kv, (), scan_limit=1000)
    assert [(c.part_text, c.keys) for c in level.children] == [("events", 2), ("users", 3)]
    assert not level.partial
    assert all(c.bytes and c.bytes > 0 for c in level.children)
    events = _data.tree_level(kv, ("events",), scan_limit=1000)
    assert [(c.part_text, c.is_key, c.deeper) for c in events.children] == [
        ("1", True, False),
        ("2", False, True),
    ]
    page = client(kv).get("/tree?prefix=users").text
    assert "3 keys under this prefix" in page


def test_a_level_past_the_scan_limit_says_it_is_partial_and_still_lists_children(
    kv: km.Kv,
) -> None:
    """Past scan_limit the counted children are marked and the rest listed without counts."""
    op = kv.atomic()
    for group in range(5):
        for i in range(4):
            op.set(("g", group, i), i)
    op.commit()
    level = _data.tree_level(kv, ("g",), scan_limit=6)
    assert level.partial and level.scanned == 6
    assert [c.part_text for c in level.children] == ["0", "1", "2", "3", "4"]
    assert level.children[0].keys == 4 and level.children[0].counted_all
    assert level.children[1].keys == 2 and not level.children[1].counted_all
    assert level.children[4].keys is None
    page = client(kv, scan_limit=6).get("/tree?prefix=g").text
    assert "Partial: the first 6 keys were counted" in page


def test_the_table_decodes_values_pages_and_filters_by_start(kv: km.Kv) -> None:
    """Entries show typed values (KvU64, bytes as hex, dates), stamps, expiry; pages chain."""
    fill(kv)
    c = client(kv)
    text = c.get("/entries?prefix=users").text
    assert "u64(7)" in text
    assert "x&#34;00ff&#34;" in text  # bytes as hex, the quotes escaped
    assert "KvU64" in text
    eve = kv.get(("users", "eve")).versionstamp or ""
    assert eve in text
    events = c.get("/entries?prefix=events").text
    assert "datetime(&#34;2024-05-01T12:00:00+00:00&#34;)" in events
    first = c.get("/entries?limit=2").text
    keys = re.findall(r'<td class="key"><a [^>]*>([^<]*)</a>', first)
    assert keys == ["events,1", "events,2,sub"]
    after = re.search(r'id="next" href="([^"]*)"', first)
    assert after is not None
    second = c.get(after.group(1).replace("&amp;", "&")).text
    assert re.findall(r'<td class="key"><a [^>]*>([^<]*)</a>', second) == [
        "users,ada",
        "users,bob",
    ]
    started = c.get("/entries?prefix=users&start=users,bob").text
    assert re.findall(r'<td class="key"><a [^>]*>([^<]*)</a>', started) == [
        "users,bob",
        "users,eve",
    ]


def test_the_expiry_of_an_entry_is_shown_where_the_engine_tells_it(kv: km.Kv) -> None:
    """An expiring key shows its deadline (UTC); others show never, or unknown."""
    kv.set(("t", "soon"), 1, expire_in=3600)
    kv.set(("t", "kept"), 2)
    page = _data.entries_page(kv, ("t",), start=None, after="", limit=10)
    by_key = {r.key_text: r for r in page.rows}
    if page.expiry_known:
        year = str(datetime.now(UTC).year)
        assert by_key["t,soon"].expires.startswith(year[:3])
        assert by_key["t,kept"].expires == ""
    else:
        assert type(kv.engine).__name__ in ("ConnectEngine", "DenoFileEngine")


def test_stored_markup_is_shown_as_text_everywhere(kv: km.Kv) -> None:
    """A stored <script> in a key or a value never reaches a page as markup."""
    kv.set(("users", SCRIPT_TAG), SCRIPT_TAG)
    c = client(kv, write=True)
    key = f'users,"{SCRIPT_TAG}"'
    pages = [
        c.get("/tree?prefix=users"),
        c.get("/entries?prefix=users"),
        c.get("/entry", params={"key": key}),
        c.get("/tree", params={"prefix": SCRIPT_TAG}),
        c.get("/entry", params={"key": f'"{SCRIPT_TAG}'}),  # a parse error echoes the input
    ]
    for page in pages:
        assert "<script>alert" not in page.text, page.url
    assert "&lt;script&gt;alert(" in pages[1].text


def test_an_entry_page_shows_an_absent_key_as_absent(kv: km.Kv) -> None:
    """A key with no value says so; a malformed key is a 400 with the parser's sentence."""
    c = client(kv)
    assert "is not in the store" in c.get("/entry?key=nope").text
    bad = c.get("/entry", params={"key": 'a,"unclosed'})
    assert bad.status_code == 400
    assert "is not a key in the text form" in bad.text


# ---------------------------------------------------------------------------
# Writes


def test_an_edit_with_the_versionstamp_it_saw_writes_and_a_stale_one_is_refused(
    kv: km.Kv,
) -> None:
    """Saving checks the versionstamp: a value changed meanwhile is shown, never overwritten."""
    kv.set(("doc",), {"v": 1})
    seen = kv.get(("doc",)).versionstamp or ""
    c = client(kv, write=True)
    done = post(c, "/entry/set", {"key": "doc", "value": '{"v": 2}', "expected": seen})
    assert done.status_code == 303
    assert kv.get(("doc",)).value == {"v": 2}
    now = kv.get(("doc",)).versionstamp or ""
    stale = post(c, "/entry/set", {"key": "doc", "value": '{"v": 3}', "expected": seen})
    assert stale.status_code == 409
    assert "changed since the page showed it" in stale.text
    assert now in stale.text  # the current versionstamp, and the value as it is
    assert "{&#34;v&#34;: 3}" in stale.text  # the refused input is kept for the user
    assert kv.get(("doc",)).value == {"v": 2}
    create = post(c, "/entry/set", {"key": "doc", "value": "5", "expected": ""})
    assert create.status_code == 409  # "create" of a key that exists
    assert kv.get(("doc",)).value == {"v": 2}


def test_delete_checks_the_versionstamp(kv: km.Kv) -> None:
    """A delete with a stale versionstamp is refused; with the current one it deletes."""
    kv.set(("doc",), 1)
    old = kv.get(("doc",)).versionstamp or ""
    kv.set(("doc",), 2)
    c = client(kv, write=True)
    assert post(c, "/entry/delete", {"key": "doc", "expected": old}).status_code == 409
    assert kv.get(("doc",)).value == 2
    current = kv.get(("doc",)).versionstamp or ""
    assert post(c, "/entry/delete", {"key": "doc", "expected": current}).status_code == 303
    assert kv.get(("doc",)).versionstamp is None


def test_value_forms_and_the_kv_limits_apply_to_writes(kv: km.Kv) -> None:
    """Text form, plain string and typed JSON are accepted; a limit is a sentence, no write."""
    c = client(kv, write=True)
    for form, text, want in [
        ("text", "u64(9)", km.KvU64(9)),
        ("string", "plain <b>", "plain <b>"),
        ("json", '{"$bytes": "AP8="}', b"\x00\xff"),
    ]:
        answer = post(c, "/entry/set", {"key": f"f,{form}", "value": text, "form": form})
        assert answer.status_code == 303, answer.text
        assert kv.get(("f", form)).value == want
    big = post(c, "/entry/set", {"key": "f,big", "value": "x" * 70_000, "form": "string"})
    assert big.status_code == 400
    assert "limit" in big.text.lower()
    assert kv.get(("f", "big")).versionstamp is None
    bad = post(c, "/entry/set", {"key": "f,bad", "value": "{nope", "form": "text"})
    assert bad.status_code == 400
    assert kv.get(("f", "bad")).versionstamp is None
    expiring = post(
        c, "/entry/set", {"key": "f,exp", "value": "1", "form": "text", "expire_in": "60"}
    )
    assert expiring.status_code == 303


# ---------------------------------------------------------------------------
# Models and the queue


def _note_model(with_index: bool) -> type[km.Model]:
    class Note(km.Model, prefix="notes", version=2):
        id: str = km.field(primary_key=True)
        title: str
        if with_index:
            by_title = km.Index("title")

    return Note


def test_models_show_fields_version_index_states_counts_and_checks(kv: km.Kv) -> None:
    """The stored descriptions list each model; its page runs the checks on demand."""
    plain = _note_model(False)
    with km.Session(kv) as s:
        for i in range(3):
            s.add(plain(id=f"n{i}", title=f"t{i}"))
    indexed = _note_model(True)
    with km.Session(kv) as s:
        s.add(indexed(id="n9", title="late"))
    c = client(kv, models=[indexed])
    listing = c.get("/models").text
    assert "_note_model.&lt;locals&gt;.Note" in listing or "Note" in listing
    assert "by_title: building" in listing
    page = c.get("/model?prefix=notes").text
    assert "id, title" in page
    assert '<dd id="documents">4</dd>' in page
    assert "building" in page
    checked = post(c, "/model/check", {"prefix": "notes", "what": "indexes"})
    assert checked.status_code == 200
    assert 'id="report-indexes"' in checked.text
    assert str(km.check_indexes(kv, indexed)).split("\n")[0] in checked.text.replace("&#39;", "'")
    docs = post(c, "/model/check", {"prefix": "notes", "what": "documents"})
    assert 'class="report ok" id="report-documents"' in docs.text
    km.rebuild_indexes(kv, indexed)
    assert "by_title: ready" in c.get("/models").text


def test_checks_need_the_class_and_stop_at_the_scan_limit(kv: km.Kv) -> None:
    """Without --models the check says how to load it; past the limit it names kvmodel check."""
    model = _note_model(False)
    with km.Session(kv) as s:
        for i in range(5):
            s.add(model(id=f"n{i}", title="t"))
    no_class = post(client(kv), "/model/check", {"prefix": "notes", "what": "documents"})
    assert no_class.status_code == 400
    assert "--models MODULE" in no_class.text
    limited = post(
        client(kv, models=[model], scan_limit=3),
        "/model/check",
        {"prefix": "notes", "what": "documents"},
    )
    assert limited.status_code == 400
    assert "more than 3 documents" in limited.text
    assert "kvmodel check" in limited.text


def test_the_queue_page_lists_messages_by_state_and_dead_letters(tmp_path: Path) -> None:
    """Ready and delayed messages with their dead-letter keys; a prefix lists dead letters."""
    kv = km.open_kv(str(tmp_path / "q.db"))
    try:
        kv.enqueue({"job": 1}, keys_if_undelivered=[("failed", "job1")])
        kv.enqueue({"job": 2}, delay=3600)
        kv.set(("failed", "job0"), {"job": 0})
        c = client(kv)
        page = c.get("/queue").text
        assert "1 ready" in page and "1 delayed" in page
        assert "failed,job1" in page
        dead = c.get("/queue?dead=failed").text
        assert "failed,job0" in dead and "{&#34;job&#34;: 0}" in dead
    finally:
        kv.close()


# ---------------------------------------------------------------------------
# Live streams, under the real server


@pytest.fixture
def server(kv: km.Kv) -> Iterator[ThreadedServer]:
    running = ThreadedServer(create_app(kv, token=TOKEN), token=TOKEN).start()
    yield running
    running.stop()


def _events(server: ThreadedServer, path: str, change: Any, want: str) -> str:
    cookies = {f"kvmodel_browse_{server.port}": TOKEN}
    with (
        httpx.Client(base_url=server.url, cookies=cookies, timeout=20) as c,
        c.stream("GET", path) as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 15
        changed = False
        data = ""
        for line in stream.iter_lines():
            if not changed:
                change()
                changed = True
            if line.startswith("data: "):
                data += line[6:] + "\n"
            elif line == "" and want in data:
                return data
            elif line == "":
                data = ""
            assert time.monotonic() < deadline, "no event came"
    raise AssertionError("the stream ended")


def test_an_entry_stream_sends_the_new_value_after_a_write(
    kv: km.Kv, server: ThreadedServer
) -> None:
    """/events/entry sends the entry again, escaped, when another writer changes it."""
    kv.set(("live",), "before")
    data = _events(server, "/events/entry?key=live", lambda: kv.set(("live",), SCRIPT_TAG), "alert")
    assert "&lt;script&gt;" in data and "<script>" not in data


def test_a_table_stream_sends_new_rows_when_a_key_appears(
    kv: km.Kv, server: ThreadedServer
) -> None:
    """/events/entries polls its page and sends the rows when one appears."""
    kv.set(("p", "a"), 1)
    data = _events(server, "/events/entries?prefix=p", lambda: kv.set(("p", "b"), 2), "p,b")
    assert "p,a" in data


# ---------------------------------------------------------------------------
# The command


SCRIPT = Path(sys.executable).with_name("kvmodel")


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kvmodel"]
    proc = subprocess.Popen(
        [*exe, "browse", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    return proc, url


def test_the_command_prints_a_loopback_url_with_a_token_that_no_log_repeats(
    tmp_path: Path,
) -> None:
    """kvmodel browse prints http://127.0.0.1:N/?token=...; requests leave no token in logs."""
    path = tmp_path / "app.db"
    with km.open_kv(str(path)) as kv:
        kv.set(("a",), 1)
    proc, url = _start(str(path))
    try:
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]{43})", url)
        assert match, url
        token = match.group(2)
        with httpx.Client(follow_redirects=True, timeout=10) as c:
            assert c.get(url).status_code == 200
            assert c.get(url.replace(token, "wrong")).status_code == 403
            assert c.get(f"http://127.0.0.1:{match.group(1)}/entry?key=a").status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "read-only" in err
    assert token not in err


def test_the_command_refuses_a_missing_store_and_browses_a_dump(tmp_path: Path) -> None:
    """A mistyped path is an error; a dump file is loaded into memory and browsed."""
    missing = subprocess.run(
        [sys.executable, "-m", "kvmodel", "browse", str(tmp_path / "nope.db")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "There is no store" in missing.stderr
    dump = tmp_path / "d.jsonl"
    lines = [
        {"kvmodel_dump": 1, "engine": "memory", "dumped_at_ms": 0},
        {"key": ["k"], "value": "from the dump", "versionstamp": "00", "expire_at_ms": None},
        {"kvmodel_dump_end": True, "entries": 1},
    ]
    dump.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc, url = _start(str(dump))
    try:
        with httpx.Client(follow_redirects=True, timeout=10) as c:
            assert "from the dump" in c.get(url.replace("/?", "/entry?key=k&")).text
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "loaded 1 entries" in err


def test_help_describes_the_command() -> None:
    """kvmodel browse --help names the token, --write and the extra."""
    from click.testing import CliRunner

    from kvmodel.cli._app import cli

    result = CliRunner().invoke(cli, ["browse", "--help"])
    assert result.exit_code == 0
    for words in ("--write", "--host", "--port", "token", "kvmodel[browse]", "--models"):
        assert words in result.output


def test_a_level_stops_at_the_byte_budget_too(kv: km.Kv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large values end a scan early (partial) even below the key limit."""
    op = kv.atomic()
    for i in range(250):
        op.set(("big", i), "x" * 100)
    op.commit()
    monkeypatch.setattr(_data, "MAX_SCAN_BYTES", 5000)
    level = _data.tree_level(kv, ("big",), scan_limit=1000)
    assert level.partial and level.scanned < 250
    assert [c.part_text for c in level.children] == [str(i) for i in range(250)]
    assert _data.count_keys(kv, ("big",), 1000) == (level.scanned, False)


def test_the_error_log_filter_removes_the_token() -> None:
    """A log record that would carry the token carries <token> instead."""
    import logging

    from kvmodel.cli.browse._server import RedactToken

    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "GET /?token=%s failed", (TOKEN,), None
    )
    assert RedactToken(TOKEN).filter(record)
    assert record.getMessage() == "GET /?token=<token> failed"


def test_a_port_in_use_is_a_sentence(tmp_path: Path) -> None:
    """Starting on a taken port fails with status 1 and says to pick another --port."""
    import socket

    path = tmp_path / "app.db"
    km.open_kv(str(path)).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "kvmodel", "browse", str(path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port 0" in result.stderr


@pytest.mark.parametrize("blocked", ["jinja2", "starlette", "hypercorn"])
def test_without_the_extra_the_command_names_it(blocked: str, tmp_path: Path) -> None:
    """kvmodel browse without Starlette, Jinja2 or hypercorn says to install the browse extra."""
    path = tmp_path / "app.db"
    km.open_kv(str(path)).close()
    code = (
        f"import sys\nsys.modules[{blocked!r}] = None\n"
        "from kvmodel.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "browse", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "pip install 'kvmodel[browse]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_level_with_many_children_stops_reading_once_it_has_enough(
    kv: km.Kv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_CHILDREN children the level shows those, counted whole, and says more follow."""
    monkeypatch.setattr(_data, "MAX_CHILDREN", 5)
    op = kv.atomic()
    for i in range(40):
        op.set(("c", i // 2, i % 2), i)
    op.commit()
    level = _data.tree_level(kv, ("c",), scan_limit=1000)
    assert level.more_children and not level.partial
    assert [(c.part_text, c.keys) for c in level.children] == [(str(i), 2) for i in range(5)]
    assert level.scanned == 10
    assert "more follow" in client(kv).get("/tree?prefix=c").text
