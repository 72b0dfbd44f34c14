"""etcd URLs: ``etcd[s]://[user[:password]@]host:port,host:port[/prefix][?options]``.

:func:`parse_url` reads one into the engine's arguments; :func:`redact_url`
shows one in messages with its password hidden.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from kvmodel.engines._etcd_transport import Credentials
from kvmodel.errors import InvalidArgumentError

__all__ = ["credentials", "parse_url", "redact_url"]


def parse_url(url: str, options: dict[str, Any]) -> tuple[list[str], bytes, dict[str, Any]]:
    """The endpoints, the key prefix and the options an etcd URL gives.

    ``options`` holds the keyword arguments of ``EtcdEngine.from_url`` that a URL
    may give too (``user``, ``password``, the TLS files and the timeouts, None
    when not given); each may come from one or the other, not both. The result's
    options leave out the timeouts neither gave, so the engine's defaults apply.

    Raises:
        InvalidArgumentError: names the URL with its password hidden.
    """
    options = dict(options)
    shown = redact_url(url)
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds"):
        raise InvalidArgumentError(
            f"{shown!r} is not an etcd URL of the form "
            "etcd://host:port,host:port/prefix (or etcds:// for TLS)."
        )
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        parsed = None
    if (
        parsed is None
        or not parsed.netloc
        or "@" in url[url.index(parsed.netloc) + len(parsed.netloc) :]
    ):
        raise InvalidArgumentError(
            f"{shown!r} is not an etcd URL of the form etcd://user:password@host:port/prefix; "
            "percent-encode '/', '?', '#', '@' and ':' in the user name and password "
            "(urllib.parse.quote(password, safe=''))."
        )
    userinfo, at, hosts = parsed.netloc.rpartition("@")
    from_url: dict[str, Any] = {}
    if at:
        name, colon, secret = userinfo.partition(":")
        from_url["user"] = urllib.parse.unquote(name)
        if colon:
            from_url["password"] = urllib.parse.unquote(secret)
    for name, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
        if name not in _TLS_PARAMS and name not in _TIMEOUT_PARAMS:
            raise InvalidArgumentError(
                f"The etcd URL {shown!r} has the query parameter {name!r}; it takes "
                f"{', '.join(_TLS_PARAMS + _TIMEOUT_PARAMS)} (the password goes in "
                "user:password@ or the password= option)."
            )
        if name in from_url:
            raise InvalidArgumentError(f"The etcd URL {shown!r} gives {name} twice.")
        if name in _TIMEOUT_PARAMS:
            from_url[name] = _seconds_param(shown, name, value)
        else:
            from_url[name] = value
    for name, value in from_url.items():
        if options[name] is not None:
            raise InvalidArgumentError(
                f"The etcd URL {shown!r} and the {name}= option both give the {name}; give it once."
            )
        options[name] = value
    tls_given = [n for n in ("ca_file", "cert_file", "key_file") if options[n] is not None]
    if scheme == "etcd" and tls_given:
        raise InvalidArgumentError(
            f"The etcd URL {shown!r} is plain HTTP (etcd://) but has the TLS options "
            f"{', '.join(tls_given)}; open it as etcds:// instead."
        )
    endpoints = [e for e in hosts.split(",") if e]
    if not endpoints or any("/" in e or ":" not in e for e in endpoints):
        raise InvalidArgumentError(
            f"The etcd URL {shown!r} does not list its members as host:port,host:port."
        )
    if scheme == "etcds":
        endpoints = ["https://" + e for e in endpoints]
    path = urllib.parse.unquote_to_bytes(parsed.path.lstrip("/"))
    given = {n: options.pop(n) for n in _TIMEOUT_PARAMS}
    options.update((n, v) for n, v in given.items() if v is not None)  # else the defaults
    return endpoints, path + b"/" if path else b"", options


def credentials(user: str | None, password: str | None) -> Credentials | None:
    if user is None and password is None:
        return None
    if not isinstance(user, str) or not user:
        raise InvalidArgumentError("An etcd password was given without user=; give the user too.")
    if not isinstance(password, str):
        raise InvalidArgumentError(
            f"The etcd user {user!r} was given without a password; give password= "
            "(or user:password@ in the URL)."
        )
    return Credentials(user, password)


def redact_url(url: str) -> str:
    """``url`` with its password (and any unknown query value) replaced by ``***``, for messages.

    Everything up to the last ``@`` counts as user information, so a password
    holding an unencoded ``/``, ``?``, ``#`` or ``@`` is hidden too. Query
    values other than the TLS file names and the timeouts are hidden as well.

    >>> redact_url("etcds://root:s3cr3t@10.0.0.1:2379/app?ca_file=/ca.pem&password=x")
    'etcds://root:***@10.0.0.1:2379/app?ca_file=/ca.pem&password=***'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hosts = rest.rpartition("@")
    if at:
        name, colon, _ = userinfo.partition(":")
        userinfo = f"{name}:***@" if colon else f"{name}@"
    base, question, query = hosts.partition("?")
    if question:
        params = []
        for param in query.split("&"):
            key, eq, _ = param.partition("=")
            shown = key in _TLS_PARAMS or key in _TIMEOUT_PARAMS or not eq
            params.append(param if shown else f"{key}=***")
        base += "?" + "&".join(params)
    return f"{scheme}://{userinfo}{base}"


_TLS_PARAMS = ("ca_file", "cert_file", "key_file")
_TIMEOUT_PARAMS = ("connect_timeout", "request_timeout", "retry_timeout")


def _seconds_param(shown: str, name: str, text: str) -> float:
    """A timeout from an etcd URL's query, as seconds (EtcdEngine checks the range)."""
    try:
        return float(text)
    except ValueError:
        raise InvalidArgumentError(
            f"The etcd URL {shown!r} gives {name}={text!r}, which is not a number of seconds."
        ) from None
