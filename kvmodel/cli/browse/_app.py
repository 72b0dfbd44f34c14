"""The browser's Starlette application: pages, live updates and checked writes.

Every request passes :meth:`Browser.check` first:

* **The token.** A request carrying ``?token=T`` with the right token gets an
  HttpOnly, SameSite=Strict cookie and a redirect to the same URL without the
  token, so it leaves the address bar and the history; later requests present
  the cookie. The cookie's name carries the port, since browsers share
  cookies between the ports of one host. Nothing is served without it.
* **The host.** Bound to a loopback address, only requests naming a loopback
  host are answered (a page on another site cannot reach the server through a
  DNS name rebound to 127.0.0.1).
* **Writes.** A POST needs the token and an ``Origin`` (or, lacking one, a
  ``Referer``) of the server's own origin: a form on another site cannot post
  here even if the browser sent the cookie, which SameSite=Strict already
  prevents. Without ``write=True`` the write endpoints answer 403.

Every page is a Jinja2 template with autoescaping on, so a stored
``<script>`` is shown as text; the Content-Security-Policy allows only this
server's own script and style besides.

Live updates are server-sent events. An entry's page watches its key with
``kv.watch`` and receives the entry again at each change. A page of the
table polls its own range once a second (a bounded read of at most one page)
and receives new rows when a key, versionstamp or deadline in it changed:
``watch`` takes at most 10 keys and cannot see keys that appear, so polling
the page is what covers a prefix.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kvmodel._kv import Kv
from kvmodel.cli._text import format_key, parse_key
from kvmodel.cli.browse import _data
from kvmodel.errors import InvalidArgumentError, KvError

if TYPE_CHECKING:
    from kvmodel.orm.model import Model

__all__ = ["DEFAULT_SCAN_LIMIT", "create_app"]

DEFAULT_SCAN_LIMIT = 10_000
"""Keys one tree level or one count reads at most before saying it is partial."""

_HERE = Path(__file__).parent
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
POLL_SECONDS = 1.0
"""How often a live table page reads its range again."""


class _Refused(Exception):
    """A request answered with a sentence and a status instead of its page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _key(text: str, what: str) -> tuple[Any, ...]:
    try:
        return parse_key(text)
    except InvalidArgumentError as exc:
        raise _Refused(400, f"The {what} {text!r} is not a key in the text form: {exc}") from exc


def _sse(html: str, event: str = "message") -> bytes:
    lines = "".join(f"data: {line}\n" for line in html.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


class Browser:
    """The application's state: the Kv, the token, the options, the templates."""

    def __init__(
        self,
        kv: Kv,
        *,
        token: str,
        write: bool,
        models: Sequence[type[Model]],
        scan_limit: int,
        store_name: str,
        loopback_only: bool,
    ) -> None:
        self.kv = kv
        self.token = token
        self.write = write
        self.scan_limit = scan_limit
        self.store_name = store_name
        self.loopback_only = loopback_only
        from kvmodel.orm.model import model_info

        self.models = {model_info(m).prefix: m for m in models}
        self.env = Environment(
            loader=FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["q"] = lambda params: urlencode(
            {k: v for k, v in params.items() if v not in (None, "")}
        )

    # -- guard -----------------------------------------------------------------

    def cookie_name(self, request: Request) -> str:
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        return f"kvmodel_browse_{port}"

    def check(self, request: Request, *, write: bool) -> Response | None:
        """None when the request may proceed; otherwise the answer to it."""
        host = request.headers.get("host") or ""
        host = host[: host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]
        if self.loopback_only and host not in _LOOPBACK:
            return self.refusal(
                421, f"This server answers requests for 127.0.0.1 or localhost, not {host!r}."
            )
        given = request.query_params.get("token")
        if given is not None:
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return self.refusal(
                    403, "The token in this URL is not the one this server printed at start."
                )
            rest = [(k, v) for k, v in parse_qsl(request.url.query) if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            answer = RedirectResponse(target, status_code=303, headers=_headers())
            answer.set_cookie(
                self.cookie_name(request),
                self.token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return answer
        cookie = request.cookies.get(self.cookie_name(request), "")
        if not secrets.compare_digest(cookie.encode(), self.token.encode()):
            return self.refusal(
                403,
                "This browser has not presented the access token: open the URL that "
                "kvmodel browse printed (it ends in ?token=...).",
            )
        if write:
            origin = request.headers.get("origin") or request.headers.get("referer") or ""
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            parts = urlsplit(origin)
            if f"{parts.scheme}://{parts.netloc}" != own or request.headers.get(
                "sec-fetch-site", "same-origin"
            ) not in ("same-origin", "none"):
                return self.refusal(
                    403,
                    "This request came from another site (its Origin is not this server's); "
                    "nothing was changed.",
                )
        return None

    # -- rendering -------------------------------------------------------------

    def page(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        template = self.env.get_template(name)
        html = template.render(
            store=self.store_name,
            engine=type(self.kv.engine).__name__,
            writable=self.write,
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=_headers())

    def fragment(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(writable=self.write, **context)

    def refusal(self, status: int, message: str) -> HTMLResponse:
        return self.page("error.html", status=status, message=message)


def _headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
    }


Handler = Callable[[Browser, Request], Awaitable[Response]]


def _route(
    browser: Browser, handler: Handler, *, post: bool = False, writes: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    """Guards ``handler``: the token always; a POST's origin; a write's --write."""

    async def endpoint(request: Request) -> Response:
        if post:
            # Read the body even when refusing: a response sent before it leaves
            # the connection unusable, and the browser's next request fails.
            try:
                request.state.form = await _form(request)
            except _Refused as exc:
                return browser.refusal(exc.status, exc.message)
        refused = browser.check(request, write=post)
        if refused is not None:
            return refused
        if writes and not browser.write:
            return browser.refusal(
                403, "This browser is read-only; start kvmodel browse with --write to change data."
            )
        try:
            return await handler(browser, request)
        except _Refused as exc:
            return browser.refusal(exc.status, exc.message)
        except KvError as exc:
            return browser.refusal(400, str(exc))

    return endpoint


# ---------------------------------------------------------------------------
# Pages


def _int(request: Request, name: str, default: int, most: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Refused(400, f"{name}={raw!r} is not a whole number.") from None
    if not 1 <= value <= most:
        raise _Refused(400, f"{name}={value} is outside 1..{most}.")
    return value


async def home(browser: Browser, request: Request) -> Response:
    return RedirectResponse("/tree", status_code=303)


async def tree(browser: Browser, request: Request) -> Response:
    text = request.query_params.get("prefix", "")
    prefix = _key(text, "prefix")
    level = await run_in_threadpool(
        _data.tree_level, browser.kv, prefix, scan_limit=browser.scan_limit
    )
    return browser.page("tree.html", level=level, scan_limit=browser.scan_limit)


def _table_args(request: Request) -> dict[str, Any]:
    prefix_text = request.query_params.get("prefix", "")
    start_text = request.query_params.get("start", "")
    return {
        "prefix_text": prefix_text,
        "start_text": start_text,
        "prefix": _key(prefix_text, "prefix"),
        "start": _key(start_text, "start key") if start_text else None,
        "after": request.query_params.get("after", ""),
        "limit": _int(request, "limit", 50, _data.MAX_PAGE),
    }


async def _entries_page(browser: Browser, args: dict[str, Any]) -> _data.Page:
    """The table page the arguments ask for, read off the event loop."""
    return await run_in_threadpool(
        _data.entries_page,
        browser.kv,
        args["prefix"],
        start=args["start"],
        after=args["after"],
        limit=args["limit"],
    )


async def entries(browser: Browser, request: Request) -> Response:
    args = _table_args(request)
    page = await _entries_page(browser, args)
    return browser.page("entries.html", page=page, args=args)


async def entry(browser: Browser, request: Request) -> Response:
    text = request.query_params.get("key", "")
    key = _key(text, "key")
    row = await run_in_threadpool(_data.entry_row, browser.kv, key)
    return browser.page(
        "entry.html", key_text=format_key(key), row=row, notice=request.query_params.get("done")
    )


async def models_index(browser: Browser, request: Request) -> Response:
    views = await run_in_threadpool(_data.model_views, browser.kv, scan_limit=browser.scan_limit)
    return browser.page("models.html", models=views, loaded=browser.models)


async def _model_page(
    browser: Browser, prefix: str, results: dict[str, Any] | None = None
) -> Response:
    views = await run_in_threadpool(
        _data.model_views, browser.kv, scan_limit=browser.scan_limit, only=prefix
    )
    if not views:
        raise _Refused(404, f"The store describes no model with the prefix {prefix!r}.")
    return browser.page(
        "model.html",
        model=views[0],
        loaded=prefix in browser.models,
        results=results or {},
        scan_limit=browser.scan_limit,
    )


async def model(browser: Browser, request: Request) -> Response:
    return await _model_page(browser, request.query_params.get("prefix", ""))


async def model_check(browser: Browser, request: Request) -> Response:
    form: dict[str, str] = request.state.form
    prefix = str(form.get("prefix", ""))
    what = str(form.get("what", ""))
    cls = browser.models.get(prefix)
    if cls is None:
        raise _Refused(
            400,
            f"The model class of the prefix {prefix!r} is not loaded, so its documents cannot be "
            "checked: start kvmodel browse with --models MODULE (the module that defines it).",
        )
    _, whole = await run_in_threadpool(_data.count_keys, browser.kv, (prefix,), browser.scan_limit)
    if not whole:
        raise _Refused(
            400,
            f"{cls.__qualname__} has more than {browser.scan_limit:,} documents, more than the "
            f"browser checks at once; run kvmodel check STORE {cls.__module__}:"
            f"{cls.__qualname__} instead.",
        )
    import kvmodel as km

    if what == "documents":
        report: Any = await run_in_threadpool(km.check_documents, browser.kv, cls, rows=False)
    elif what == "indexes":
        report = await run_in_threadpool(km.check_indexes, browser.kv, cls)
    else:
        raise _Refused(400, f"There is no check named {what!r}; use documents or indexes.")
    return await _model_page(browser, prefix, {what: (report.ok, str(report))})


async def queue(browser: Browser, request: Request) -> Response:
    view = await run_in_threadpool(_data.queue_view, browser.kv)
    dead_text = request.query_params.get("dead", "")
    dead = None
    if dead_text:
        dead = await run_in_threadpool(
            _data.entries_page,
            browser.kv,
            _key(dead_text, "dead-letter prefix"),
            start=None,
            after="",
            limit=50,
        )
    return browser.page("queue.html", queue=view, dead_text=dead_text, dead=dead)


# ---------------------------------------------------------------------------
# Writes

_MAX_FORM = 4 * 1024 * 1024


async def _form(request: Request) -> dict[str, str]:
    """A posted form (application/x-www-form-urlencoded), read without python-multipart."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise _Refused(
                413, f"The form is larger than {_MAX_FORM:,} bytes; nothing was written."
            )
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError:
        raise _Refused(400, "The form is not UTF-8 text; nothing was written.") from None


async def entry_set(browser: Browser, request: Request) -> Response:
    form: dict[str, str] = request.state.form
    key_text = str(form.get("key", ""))
    key = _key(key_text, "key")
    value_text = str(form.get("value", ""))
    expected = str(form.get("expected", "")) or None
    expire_text = str(form.get("expire_in", "")).strip()
    try:
        expire_in = float(expire_text) if expire_text else None
    except ValueError:
        raise _Refused(400, f"expire in {expire_text!r} is not a number of seconds.") from None
    try:
        value = _data.parse_input(value_text, str(form.get("form", "text")))
        outcome = await run_in_threadpool(
            _data.set_entry, browser.kv, key, value, expected=expected, expire_in=expire_in
        )
    except KvError as exc:
        row = await run_in_threadpool(_data.entry_row, browser.kv, key)
        return browser.page(
            "entry.html", 400, key_text=format_key(key), row=row, error=str(exc), tried=value_text
        )
    if not outcome.ok:
        return browser.page(
            "entry.html",
            409,
            key_text=format_key(key),
            row=outcome.current,
            error=outcome.message,
            tried=value_text,
        )
    target = "/entry?" + urlencode({"key": format_key(key), "done": outcome.message})
    return RedirectResponse(target, status_code=303)


async def entry_delete(browser: Browser, request: Request) -> Response:
    form: dict[str, str] = request.state.form
    key = _key(str(form.get("key", "")), "key")
    expected = str(form.get("expected", ""))
    if not expected:
        raise _Refused(400, "A delete needs the versionstamp the page showed; reload the page.")
    outcome = await run_in_threadpool(_data.delete_entry, browser.kv, key, expected=expected)
    if not outcome.ok:
        return browser.page(
            "entry.html", 409, key_text=format_key(key), row=outcome.current, error=outcome.message
        )
    target = "/entry?" + urlencode({"key": format_key(key), "done": outcome.message})
    return RedirectResponse(target, status_code=303)


# ---------------------------------------------------------------------------
# Live updates


_HEARTBEAT = 15.0


async def _stream(request: Request, produce: AsyncIterator[str]) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    async for html in produce:
        if await request.is_disconnected():
            return
        yield _sse(html)


async def entry_events(browser: Browser, request: Request) -> Response:
    key = _key(request.query_params.get("key", ""), "key")
    watch = await run_in_threadpool(browser.kv.watch, [key])  # a network engine may block

    async def produce() -> AsyncIterator[str]:
        idle = 0.0
        try:
            while not await request.is_disconnected():
                try:
                    found = await run_in_threadpool(watch.poll, POLL_SECONDS)
                except StopIteration:
                    return  # the Kv closed
                if found is None:
                    idle += POLL_SECONDS
                    if idle >= _HEARTBEAT:
                        idle = 0.0
                        yield ""
                    continue
                idle = 0.0
                row = await run_in_threadpool(_data.entry_row, browser.kv, key)
                yield browser.fragment("_entry.html", key_text=format_key(key), row=row)
        finally:
            watch.close()

    return StreamingResponse(
        _stream(request, produce()), media_type="text/event-stream", headers=_headers()
    )


async def entries_events(browser: Browser, request: Request) -> Response:
    args = _table_args(request)

    async def produce() -> AsyncIterator[str]:
        last: object = None
        idle = 0.0
        while not await request.is_disconnected():
            try:
                page = await _entries_page(browser, args)
            except KvError:
                return  # the Kv closed
            seen = tuple((r.key_text, r.versionstamp, r.expires) for r in page.rows)
            if seen != last:  # the first read too: the page may have changed since it was served
                yield browser.fragment("_rows.html", page=page, args=args)
                last = seen
                idle = 0.0
            else:
                idle += POLL_SECONDS
                if idle >= _HEARTBEAT:
                    idle = 0.0
                    yield ""
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        _stream(request, produce()), media_type="text/event-stream", headers=_headers()
    )


def create_app(
    kv: Kv,
    *,
    token: str,
    write: bool = False,
    models: Sequence[type[Model]] = (),
    scan_limit: int = DEFAULT_SCAN_LIMIT,
    store_name: str = "",
    loopback_only: bool = True,
) -> Starlette:
    """The browser over ``kv`` as an ASGI application.

    Args:
        kv: the store shown (the caller opens and closes it).
        token: the access token every request must present (query once, then cookie).
        write: allow set, edit and delete; read-only otherwise.
        models: model classes whose documents and indexes the model pages may check.
        scan_limit: keys one tree level or count reads at most.
        store_name: what the pages call the store.
        loopback_only: answer only requests whose Host is a loopback name.
    """
    if not token:
        raise InvalidArgumentError("The browser needs a non-empty access token.")
    browser = Browser(
        kv,
        token=token,
        write=write,
        models=models,
        scan_limit=scan_limit,
        store_name=store_name,
        loopback_only=loopback_only,
    )

    def get(path: str, handler: Handler) -> Route:
        return Route(path, _route(browser, handler), methods=["GET"])

    def post(path: str, handler: Handler, *, writes: bool) -> Route:
        return Route(path, _route(browser, handler, post=True, writes=writes), methods=["POST"])

    routes = [
        get("/", home),
        get("/tree", tree),
        get("/entries", entries),
        get("/entry", entry),
        get("/models", models_index),
        get("/model", model),
        get("/queue", queue),
        get("/events/entry", entry_events),
        get("/events/entries", entries_events),
        post("/model/check", model_check, writes=False),
        post("/entry/set", entry_set, writes=True),
        post("/entry/delete", entry_delete, writes=True),
        Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.state.browser = browser
    return app
