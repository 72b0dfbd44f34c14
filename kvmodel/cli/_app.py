"""The commands of ``kvmodel``: click for the parser, rich for tables and progress.

Why click and not typer: typer builds on click and adds type-hint parsing and
its own dependencies (and rich-formatted help that slows start-up); the
commands here take few options, several of which are repeated or mutually
exclusive, which click states directly. rich draws the tables and the
progress bars (with rate and ETA) on a terminal; when stdout or stderr is not
a terminal the output is plain text, one item a line, fit for pipes.

Keys and values on the command line and in the default output use the text
form of :mod:`kvmodel.cli._text` (``users,ada`` and ``{"name": "Ada"}``);
``--json`` prints typed JSON instead. The store, always the first argument,
is a SQLite path, ``:memory:`` or an ``etcd://``/``etcds://`` URL.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

import kvmodel as km
from kvmodel.cli import _dump as _cli_dump
from kvmodel.cli import _engine as _cli_engine
from kvmodel.cli._described import Descriptions
from kvmodel.cli._text import (
    format_key,
    format_value,
    key_to_json,
    parse_key,
    parse_value,
    value_to_json,
)
from kvmodel.errors import InvalidArgumentError

__all__ = ["PipeClosed", "cli", "run"]

TEXT_FORM_HELP = """\
Keys are parts separated by commas: users,ada,42. A part is a bare word or a
"json string" (str), 42 (int, any size), 1.5 / -0.0 / nan / inf (float),
true / false (bool), x"00ff" (bytes as hex). "" is the empty key. A bare word
may start with a digit when it is not a number, so ids need no quotes:
orders,01M95P6WMWB0WFC90HRV3ZTRFC is two strings; quote "42" for the string.
A key may also be the JSON array that --json prints: '["users", "ada", 42]'.
In a key, datetime("2024-05-01T12:00:00+00:00"), date("2024-05-01") and
uuid("...") are the parts an index stores for those values (UTC microseconds,
the ordinal, 16 bytes); ls and get print the keys of the object mapper's
models and indexes that way, and an index entry's value, its document's
encoded key, as key(orders,01M95P6WMWB0WFC90HRV3ZTRFC). --json prints keys
and values as stored.

Values are literals: null, true, 42, 1.5, "text", x"00ff", u64(5) (KvU64),
datetime("2024-05-01T12:00:00+02:00", zone="Europe/Paris"), lists [1, 2]
and maps {"a": 1, 2: x"00"}. --json prints typed JSON: {"$bytes": base64},
{"$int": "..."} beyond 2**53, {"$float": "nan"}, {"$u64": "5"},
{"$datetime": iso}, {"$map": [[k, v], ...]} for maps with non-str keys.
"""


def run(args: list[str]) -> int:
    """Runs the click group on ``args``; errors that are not usage errors propagate."""
    try:
        result = cli.main(args=args, prog_name="kvmodel", standalone_mode=False)
    except click.exceptions.Abort:
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    return result if isinstance(result, int) else 0


# ---------------------------------------------------------------------------
# Shared pieces


def _err_console() -> Console:
    return Console(stderr=True)


class PipeClosed(Exception):
    """Stdout's reader went away (``| head``).

    Raised instead of BrokenPipeError because click turns an EPIPE into
    ``sys.exit(1)``; :func:`kvmodel.cli.main` ends quietly with status 0.
    """


def _out(text: str) -> None:
    try:
        click.echo(text)
    except BrokenPipeError as exc:
        raise PipeClosed from exc


def _print(console: Console, thing: Any) -> None:
    try:
        console.print(thing)
    except BrokenPipeError as exc:
        raise PipeClosed from exc


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class _RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class Reporter:
    """Progress of long work: a rich bar on a terminal, plain lines on stderr otherwise."""

    PLAIN_EVERY = 2.0  # seconds between plain lines

    def __init__(self, what: str, total: int | None, unit: str) -> None:
        self.what = what
        self.unit = unit
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.progress: Progress | None = None
        if _is_terminal(sys.stderr):
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                _RateColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=_err_console(),
            )
            self.task = self.progress.add_task(what, total=total)
            self.progress.start()

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=self.total)
            return
        now = time.monotonic()
        if now - self.last_line >= self.PLAIN_EVERY:
            self.last_line = now
            click.echo(self._line(now), err=True)

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        return f"{self.what}: {self.done}{of} {self.unit}, {self.done / elapsed:,.0f}/s"

    def close(self, finished: bool) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif finished:
            click.echo(self._line(time.monotonic()) + ", done", err=True)


@contextmanager
def reporting(what: str, total: int | None, unit: str) -> Iterator[Reporter]:
    reporter = Reporter(what, total, unit)
    finished = False
    try:
        yield reporter
        finished = True
    finally:
        reporter.close(finished)


def _parse_option(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise InvalidArgumentError(f"The option {text!r} is not of the form NAME=VALUE.")
    try:
        value: Any = parse_value(raw)
    except InvalidArgumentError:
        value = raw  # a plain word or path
    return name, value


def _local_file(store: str) -> str | None:
    """The file a store name points at, or None for memory and network stores."""
    if store == ":memory:" or store.startswith(("etcd://", "etcds://", "http://", "https://")):
        return None
    return store.removeprefix("deno:")


@contextmanager
def open_store(ctx: click.Context, store: str, *, create: bool = False) -> Iterator[km.Kv]:
    """Opens the store named on the command line, with the group's -o options.

    Only a command that writes (``create=True``) may create a store file; the
    others refuse a path with no file, so a mistyped path is an error rather
    than a new, empty store.
    """
    path = _local_file(store)
    if path is not None and not os.path.exists(path):
        if not create:
            raise InvalidArgumentError(
                f"There is no store at {path!r}: no such file. Check the path; "
                "a command that writes (set, load, sum) creates a new store."
            )
        click.echo(f"Created a new store at {path!r}.", err=True)
    options = dict(_parse_option(o) for o in ctx.find_root().params.get("option") or ())
    if (
        store.startswith(("etcd://", "etcds://"))
        and "password" not in options
        and os.environ.get("KVMODEL_PASSWORD")
    ):
        options["password"] = os.environ["KVMODEL_PASSWORD"]
    kv = km.open_kv(store, **options)
    try:
        yield kv
    finally:
        kv.close()


def _engine_name(kv: km.Kv) -> str:
    return type(kv.engine).__name__.removesuffix("Engine").lower()


def _key_arg(text: str) -> tuple[Any, ...]:
    return parse_key(text)


def _entry_json(e: km.Entry[Any]) -> str:
    return json.dumps(
        {
            "key": key_to_json(e.key),
            "value": value_to_json(e.value),
            "versionstamp": e.versionstamp,
        },
        ensure_ascii=False,
        allow_nan=False,
    )


def _models_of(spec: str) -> list[type[km.Model]]:
    """The models named by ``module`` (every Model subclass in it) or ``module:Class``."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, so ./app/models.py imports
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgumentError(
            f"Cannot import the module {module_name!r}: {exc}; run kvmodel from the "
            "directory that holds it or add that directory to PYTHONPATH."
        ) from exc
    if attr:
        if not hasattr(module, attr):
            names = sorted(
                name
                for name, obj in vars(module).items()
                if inspect.isclass(obj) and issubclass(obj, km.Model) and obj is not km.Model
            )
            raise InvalidArgumentError(
                f"The module {module_name!r} has no {attr!r}; its models are "
                f"{', '.join(names) or 'none'}."
            )
        found = getattr(module, attr)
        if not (inspect.isclass(found) and issubclass(found, km.Model)):
            raise InvalidArgumentError(
                f"{spec!r} is a {type(found).__name__}, not a km.Model subclass."
            )
        return [found]
    models = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, km.Model)
        and obj is not km.Model
        and getattr(obj, "__kvmodel__", None) is not None
    ]
    if not models:
        raise InvalidArgumentError(f"The module {module_name!r} defines no km.Model subclass.")
    return models


def _all_models(specs: tuple[str, ...]) -> list[type[km.Model]]:
    out: list[type[km.Model]] = []
    for spec in specs:
        for model in _models_of(spec):
            if model not in out:
                out.append(model)
    return out


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------
# The group


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="The text form of keys and values: kvmodel help-text.",
)
@click.version_option(package_name="kvmodel", prog_name="kvmodel")
@click.option("--debug", is_flag=True, help="Show a traceback when a command fails.")
@click.option(
    "-o",
    "--option",
    multiple=True,
    metavar="NAME=VALUE",
    help="An open_kv option, e.g. -o busy_timeout=30 or -o ca_file=ca.pem (repeatable); "
    "an etcd password may come from $KVMODEL_PASSWORD.",
)
def cli(debug: bool, option: tuple[str, ...]) -> None:
    """kvmodel: look at, change, export and repair a kvmodel store.

    STORE, the first argument of every command, is a SQLite file path,
    :memory: or an etcd://host:port/prefix (etcds:// for TLS) URL.
    """


@cli.command("help-text")
def help_text() -> None:
    """Explain the text form of keys and values."""
    _out(TEXT_FORM_HELP.rstrip())


@cli.command()
def version() -> None:
    """Print kvmodel's version."""
    from kvmodel.cli import version as installed

    _out(f"kvmodel {installed()}")


# ---------------------------------------------------------------------------
# Reading and writing keys


@cli.command()
@click.argument("store")
@click.argument("prefix", required=False)
@click.option("--start", help="First key (inclusive).")
@click.option("--end", help="End key (exclusive).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many entries.")
@click.option("--reverse", is_flag=True, help="Highest keys first.")
@click.option("--cursor", help="Resume after the cursor an earlier ls printed.")
@click.option("--keys-only", is_flag=True, help="Print the keys only.")
@click.option("--json", "as_json", is_flag=True, help="One typed JSON object a line.")
@click.pass_context
def ls(
    ctx: click.Context,
    store: str,
    prefix: str | None,
    start: str | None,
    end: str | None,
    limit: int | None,
    reverse: bool,
    cursor: str | None,
    keys_only: bool,
    as_json: bool,
) -> int:
    """List the entries under PREFIX (all by default), or between --start and --end.

    With --limit, the cursor to pass to --cursor for the next page is printed
    on stderr.
    """
    with open_store(ctx, store) as kv:
        selector_prefix = None if prefix is None else _key_arg(prefix)
        if selector_prefix is None and start is None and end is None:
            selector_prefix = ()
        it = kv.list(
            selector_prefix,
            start=None if start is None else _key_arg(start),
            end=None if end is None else _key_arg(end),
            limit=limit,
            reverse=reverse,
            cursor=cursor,
        )
        described = None if as_json else Descriptions.read(kv)
        table = None
        if not as_json and _is_terminal(sys.stdout):
            table = Table(box=None, header_style="bold")
            table.add_column("key", overflow="fold")
            if not keys_only:
                table.add_column("value", overflow="fold")
                table.add_column("versionstamp", style="dim")
        count = 0
        for entry in it:
            count += 1
            if described is None:
                _out(_entry_json(entry))
                continue
            shown_key = described.format_key(entry.key)
            if table is not None:
                row = [shown_key]
                if not keys_only:
                    row += [
                        described.format_value(entry.key, entry.value),
                        entry.versionstamp or "",
                    ]
                table.add_row(*(Text(c) for c in row))
            elif keys_only:
                _out(shown_key)
            else:
                _out(f"{shown_key}\t{described.format_value(entry.key, entry.value)}")
        if table is not None:
            _print(Console(), table)
        if limit is not None and count == limit and it.cursor:
            click.echo(f"next page: --cursor {it.cursor}", err=True)
    return 0


@cli.command()
@click.argument("store")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print typed JSON with the versionstamp.")
@click.pass_context
def get(ctx: click.Context, store: str, key: str, as_json: bool) -> int:
    """Print the value of KEY (status 1 when it is absent)."""
    with open_store(ctx, store) as kv:
        entry = kv.get(_key_arg(key))
        if entry.versionstamp is None:
            click.echo(f"kvmodel: the key {format_key(entry.key)} is not in the store.", err=True)
            return 1
        if as_json:
            _out(_entry_json(entry))
        else:
            _out(Descriptions.read(kv).format_value(entry.key, entry.value))
    return 0


@cli.command("set")
@click.argument("store")
@click.argument("key")
@click.argument("value")
@click.option("--string", "as_string", is_flag=True, help="Store VALUE as a str, unparsed.")
@click.option("--json", "as_json", is_flag=True, help="VALUE is typed JSON.")
@click.option("--expire-in", type=float, metavar="SECONDS", help="Delete the key after this.")
@click.pass_context
def set_(
    ctx: click.Context,
    store: str,
    key: str,
    value: str,
    as_string: bool,
    as_json: bool,
    expire_in: float | None,
) -> int:
    """Set KEY to VALUE (text form) and print the commit's versionstamp."""
    from kvmodel.cli._text import value_from_json

    if as_string and as_json:
        raise click.UsageError("--string and --json cannot be used together.")
    if as_string:
        parsed: Any = value
    elif as_json:
        try:
            parsed = value_from_json(json.loads(value))
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"VALUE is not JSON: {exc.msg}.") from exc
    else:
        parsed = parse_value(value)
    with open_store(ctx, store, create=True) as kv:
        result = kv.set(_key_arg(key), parsed, expire_in=expire_in)
        _out(str(result.versionstamp))
    return 0


@cli.command()
@click.argument("store")
@click.argument("keys", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, store: str, keys: tuple[str, ...]) -> int:
    """Delete KEYS in one commit (absent keys are fine)."""
    with open_store(ctx, store) as kv:
        op = kv.atomic()
        for key in keys:
            op.delete(_key_arg(key))
        op.commit()
    return 0


@cli.command("sum")
@click.argument("store")
@click.argument("key")
@click.argument("n", type=click.IntRange(min=0, max=2**64 - 1))
@click.pass_context
def sum_(ctx: click.Context, store: str, key: str, n: int) -> int:
    """Add N to the KvU64 at KEY (wrapping at 2**64) and print the result."""
    with open_store(ctx, store, create=True) as kv:
        k = _key_arg(key)
        kv.atomic().sum(k, km.KvU64(n)).commit()
        _out(format_value(kv.get(k).value))
    return 0


@cli.command()
@click.argument("store")
@click.argument("keys", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One typed JSON object per entry.")
@click.pass_context
def watch(ctx: click.Context, store: str, keys: tuple[str, ...], as_json: bool) -> int:
    """Print KEYS now and again after every change, until Ctrl-C (at most 10 keys)."""
    with open_store(ctx, store) as kv:
        parsed = [_key_arg(k) for k in keys]
        described = Descriptions.read(kv)
        with kv.watch(parsed) as stream:
            for entries in stream:
                stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
                for e in entries:
                    if as_json:
                        _out(_entry_json(e))
                    else:
                        shown = (
                            "(absent)"
                            if e.versionstamp is None
                            else described.format_value(e.key, e.value)
                        )
                        _out(f"{stamp}\t{described.format_key(e.key)}\t{shown}")
                try:
                    sys.stdout.flush()
                except BrokenPipeError as exc:
                    raise PipeClosed from exc
    return 0


# ---------------------------------------------------------------------------
# Dump and load


@cli.command()
@click.argument("store")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="Write to this file instead of stdout.",
)
@click.pass_context
def dump(ctx: click.Context, store: str, output: str) -> int:
    """Write the whole store, read at one point, as newline-delimited JSON.

    Each line holds a key, its value, versionstamp and expiry deadline;
    queue messages are not included.
    """
    with open_store(ctx, store) as kv:
        total = _cli_dump.count_entries(kv) if _is_terminal(sys.stderr) else None
        stream = click.open_file(output, "w", encoding="utf-8", atomic=output != "-")
        with stream as out, reporting("dump", total, "entries") as bar:
            count = _cli_dump.dump(
                kv, out, engine_name=_engine_name(kv), now_ms=kv.now_ms(), progress=bar.update
            )
            bar.update(count, max(count, total or 0) if total is not None else None)
    return 0


@cli.command()
@click.argument("store")
@click.argument("input_file", metavar="[FILE]", default="-", type=click.Path(allow_dash=True))
@click.option("--if-absent", is_flag=True, help="Skip keys the store holds (resumes a load).")
@click.option("--overwrite", is_flag=True, help="Replace keys the store holds.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Entries per commit at most (fewer when the engine's limits need).",
)
@click.pass_context
def load(
    ctx: click.Context,
    store: str,
    input_file: str,
    if_absent: bool,
    overwrite: bool,
    batch_size: int,
) -> int:
    """Write the entries of a dump (FILE, or stdin) into STORE in batched commits.

    A key the store already holds stops the load, unless --if-absent (keep
    it) or --overwrite (replace it). Expired entries are skipped.
    """
    if if_absent and overwrite:
        raise click.UsageError("--if-absent and --overwrite cannot be used together.")
    mode = "if_absent" if if_absent else "overwrite" if overwrite else "strict"
    size = None if input_file == "-" else os.path.getsize(input_file)
    with (
        open_store(ctx, store, create=True) as kv,
        click.open_file(input_file, "r", encoding="utf-8") as src,
    ):
        total = None
        if size is not None and _is_terminal(sys.stderr):
            with open(input_file, encoding="utf-8") as f:
                total = max(0, sum(1 for _ in f) - 2)  # less the header and trailer
        with reporting("load", total, "entries") as bar:
            report = _cli_dump.load(
                kv, src, mode=mode, batch_size=batch_size, progress=lambda r: bar.update(r.read)
            )
        click.echo(str(report), err=True)
        if not report.complete:
            return 1
    return 0


# ---------------------------------------------------------------------------
# Object mapper upkeep


@cli.command()
@click.argument("store")
@click.argument("modules", nargs=-1, required=True)
@click.pass_context
def check(ctx: click.Context, store: str, modules: tuple[str, ...]) -> int:
    """Check the documents and indexes of the models in MODULES (app.models or app.models:User).

    Exits with status 1 when a document does not fit its model, an index
    entry is missing, dangling or wrong, or (on SQLite) a stored row is one
    no read can reach, such as a key another program stored as TEXT.
    """
    models = _all_models(modules)
    ok = True
    with open_store(ctx, store) as kv, reporting("check", len(models), "models") as bar:
        for i, model in enumerate(models):
            # Rows no read reaches belong to the store, not a model: reported once.
            documents = km.check_documents(kv, model, rows=i == 0)
            indexes = km.check_indexes(kv, model)
            bar.update(i + 1)
            name = model.__qualname__
            _out(f"{name}: {documents}")
            _out(f"{name}: {indexes}")
            ok = ok and documents.ok and indexes.ok
    return 0 if ok else 1


@cli.command("rebuild-indexes")
@click.argument("store")
@click.argument("modules", nargs=-1, required=True)
@click.pass_context
def rebuild_indexes(ctx: click.Context, store: str, modules: tuple[str, ...]) -> int:
    """Rewrite the index entries of the models in MODULES and mark their indexes ready."""
    models = _all_models(modules)
    ok = True
    with open_store(ctx, store) as kv, reporting("rebuild", len(models), "models") as bar:
        for i, model in enumerate(models):
            report = km.rebuild_indexes(kv, model)
            bar.update(i + 1)
            _out(f"{model.__qualname__}: {report}")
            ok = ok and report.ok
    return 0 if ok else 1


@cli.command()
@click.argument("store")
@click.argument("modules", nargs=-1, required=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=100, show_default=True)
@click.pass_context
def migrate(ctx: click.Context, store: str, modules: tuple[str, ...], batch_size: int) -> int:
    """Upgrade the stored documents of the models in MODULES to their model's version."""
    models = _all_models(modules)
    ok = True
    with open_store(ctx, store) as kv:
        for model in models:
            prefix = km.orm.model.model_info(model).prefix
            total = sum(1 for _ in kv.list(prefix=(prefix,), batch_size=1000))
            with reporting(f"migrate {model.__qualname__}", total, "documents") as bar:
                report = km.migrate(
                    kv, model, batch_size=batch_size, progress=lambda r: bar.update(r.scanned)
                )
            _out(f"{model.__qualname__}: {report}")
            ok = ok and report.ok
    return 0 if ok else 1


# ---------------------------------------------------------------------------
# Stats, queue, vacuum


def _stats(kv: km.Kv) -> dict[str, Any]:
    """Keys and bytes per top-level prefix (from one snapshot), queue and file figures."""
    from kvmodel.keys import decode_key

    prefixes: dict[str, list[int]] = {}
    expiring = 0
    snapshot = _cli_dump.open_snapshot(kv)
    try:
        for item in _cli_dump.snapshot_entries(snapshot):
            raw = item.entry
            if raw.key.startswith(_cli_dump.SYSTEM_PREFIX):
                name = "(kvmodel system keys)"
            else:
                first = decode_key(raw.key)[:1]
                name = format_key(first)
            row = prefixes.setdefault(name, [0, 0])
            row[0] += 1
            row[1] += len(raw.key) + len(raw.value)
            expiring += item.expire_at_ms is not None
    finally:
        snapshot.close()
    queue = _cli_engine.queue_info(kv.engine, kv.now_ms())
    out: dict[str, Any] = {
        "engine": _engine_name(kv),
        "prefixes": [
            {"prefix": name, "keys": keys, "bytes": size}
            for name, (keys, size) in sorted(prefixes.items())
        ],
        "keys": sum(r[0] for r in prefixes.values()),
        "bytes": sum(r[1] for r in prefixes.values()),
        "expiring_keys": expiring,
        "queue": None
        if not queue.supported
        else {s: queue.count(s) for s in ("ready", "delayed", "leased", "quarantined")},
        "files": _cli_engine.file_sizes(kv.engine),
    }
    return out


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def stats(ctx: click.Context, store: str, as_json: bool) -> int:
    """Keys and bytes per top-level prefix, queue depth, file sizes.

    Bytes count encoded keys and values. Queue messages given up on are
    written to their keys_if_undelivered (ordinary keys) and are not counted
    as messages; "quarantined" counts damaged messages moved aside.
    """
    with open_store(ctx, store) as kv:
        figures = _stats(kv)
    if as_json:
        _out(json.dumps(figures))
        return 0
    terminal = _is_terminal(sys.stdout)
    # Off a terminal rich would wrap at 80 columns; a pipe gets whole lines.
    console = Console(no_color=not terminal, width=None if terminal else 1000)
    shown = store
    if store.startswith(("etcd://", "etcds://")):
        from kvmodel.engines.etcd import redact_url

        shown = redact_url(store)
    _print(console, Text(f"{shown} ({figures['engine']} engine)", style="bold"))
    table = Table(box=None, header_style="bold")
    table.add_column("prefix")
    table.add_column("keys", justify="right")
    table.add_column("bytes", justify="right")
    for row in figures["prefixes"]:
        table.add_row(Text(row["prefix"]), f"{row['keys']:,}", f"{row['bytes']:,}")
    table.add_row("[bold]total", f"[bold]{figures['keys']:,}", f"[bold]{figures['bytes']:,}")
    _print(console, table)
    lines = [f"expiring keys: {figures['expiring_keys']:,}"]
    queue = figures["queue"]
    if queue is None:
        lines.append("queue: not readable on this engine")
    else:
        lines.append(
            "queue: "
            + ", ".join(f"{n:,} {state}" for state, n in queue.items())
            + " (dead letters are ordinary keys)"
        )
    for path, size in (figures["files"] or {}).items():
        lines.append(f"file {path}: {size:,} bytes")
    for line in lines:
        _print(console, Text(line))
    return 0


@cli.group()
def queue() -> None:
    """List queue messages, or enqueue dead-lettered values again."""


@queue.command("ls")
@click.argument("store")
@click.option(
    "--state",
    type=click.Choice(["ready", "delayed", "leased", "quarantined"]),
    multiple=True,
    help="Only messages in this state (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per message.")
@click.pass_context
def queue_ls(ctx: click.Context, store: str, state: tuple[str, ...], as_json: bool) -> int:
    """List the messages waiting in the queue, oldest ready time first."""
    with open_store(ctx, store) as kv:
        info = _cli_engine.queue_info(kv.engine, kv.now_ms())
    if not info.supported:
        raise InvalidArgumentError(f"Cannot list the queue: {info.why_not}.")
    for m in info.messages:
        if state and m.state not in state:
            continue
        if as_json:
            _out(
                json.dumps(
                    {
                        "id": m.id,
                        "state": m.state,
                        "ready_at_ms": m.ready_at_ms,
                        "attempt": m.attempt,
                        "value": value_to_json(m.value),
                        "keys_if_undelivered": [key_to_json(k) for k in m.keys_if_undelivered],
                        "note": m.note,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            dead = " ".join(format_key(k) for k in m.keys_if_undelivered)
            _out(
                f"{m.id}\t{m.state}\t{_when(m.ready_at_ms)}\tattempt {m.attempt}\t"
                f"{format_value(m.value)}\t{dead}\t{m.note}".rstrip()
            )
    return 0


@queue.command("requeue")
@click.argument("store")
@click.argument("keys", nargs=-1, required=True)
@click.option("--delay", type=float, default=0.0, help="Seconds before delivery.")
@click.option("--keep", is_flag=True, help="Keep the dead-letter keys (default: delete them).")
@click.pass_context
def queue_requeue(
    ctx: click.Context, store: str, keys: tuple[str, ...], delay: float, keep: bool
) -> int:
    """Enqueue the values at KEYS (dead letters) again, deleting the keys in the same commit.

    Each key is checked against the versionstamp it was read at, so a value
    changed meanwhile is not lost; the new message has the default backoff
    schedule and no keys_if_undelivered.
    """
    with open_store(ctx, store) as kv:
        for text in keys:
            entry = kv.get(_key_arg(text))
            if entry.versionstamp is None:
                raise InvalidArgumentError(f"The key {text} is not in the store.")
            op = kv.atomic().check(entry).enqueue(entry.value, delay=delay)
            if not keep:
                op.delete(entry.key)
            if not op.commit().ok:
                raise km.ConflictError(
                    f"The key {text} changed while it was requeued; run the command again.",
                    keys=[entry.key],
                )
            click.echo(f"requeued {text}", err=True)
    return 0


@cli.command()
@click.argument("store")
@click.pass_context
def vacuum(ctx: click.Context, store: str) -> int:
    """Reclaim the space of deleted data in a SQLite file (takes the write lock)."""
    with open_store(ctx, store) as kv:
        engine = kv.engine
        do: Callable[[], None] | None = getattr(engine, "vacuum", None)
        if do is None:
            raise InvalidArgumentError(
                f"vacuum works on SQLite files; the {_engine_name(kv)} engine has no file "
                "to compact (etcd compacts with etcdctl compact and defrag)."
            )
        before = sum((_cli_engine.file_sizes(engine) or {}).values())
        do()
        after = sum((_cli_engine.file_sizes(engine) or {}).values())
        click.echo(f"{store}: {before:,} -> {after:,} bytes", err=True)
    return 0


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def demo(ctx: click.Context) -> int:
    """Run the orders demo on an embedded SQLite file."""
    orders = importlib.import_module("kvmodel.examples.orders")
    status: int = orders.main(list(ctx.args))
    return status


@cli.command()
@click.argument("store")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=4512, show_default=True)
@click.option(
    "--token",
    envvar="KVMODEL_ACCESS_TOKEN",
    required=True,
    help="Access token clients present (DENO_KV_ACCESS_TOKEN); or $KVMODEL_ACCESS_TOKEN.",
)
@click.option(
    "--values",
    type=click.Choice(["any", "v8", "msgpack"]),
    default="any",
    show_default=True,
    help="Object values taken: v8 (Deno's; readable by Deno), msgpack (kvmodel's) or any.",
)
@click.pass_context
def serve(ctx: click.Context, store: str, host: str, port: int, token: str, values: str) -> int:
    """Serve STORE over Deno's KV Connect protocol (Deno.openKv("http://HOST:PORT")).

    Until Ctrl-C or SIGTERM; the connect extra (protobuf, starlette, hypercorn) is needed.
    """
    from kvmodel.connect import serve as serve_store

    if values == "v8":
        # Checked before serving: otherwise the first Deno request would fail.
        importlib.import_module("v8serialize")
    with open_store(ctx, store, create=True) as kv:
        serve_store(
            kv,
            host=host,
            port=port,
            token=token,
            values="v8" if values == "v8" else "msgpack" if values == "msgpack" else "any",
            announce=lambda url: click.echo(
                f"kvmodel: serving {store} over KV Connect on {url}", err=True
            ),
        )
    return 0


# The data browser lives in its own package; its web dependencies load only when it runs.
from kvmodel.cli.browse._command import browse as _browse  # noqa: E402

cli.add_command(_browse)
