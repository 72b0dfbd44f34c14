"""The ``kvmodel browse`` command (registered on the group in :mod:`kvmodel.cli._app`).

Starlette, Jinja2 and hypercorn are imported only when the command runs, so
the rest of the command line works without the ``browse`` extra.
"""

from __future__ import annotations

import os
from typing import Any

import click

__all__ = ["browse"]

INSTALL_HINT = (
    "kvmodel browse needs the browse extra ({name} is not installed): "
    "pip install 'kvmodel[browse]'."
)
_EXTRA_MODULES = ("starlette", "jinja2", "hypercorn", "anyio", "h11", "h2", "wsproto")


def _is_dump(path: str) -> bool:
    """True when ``path`` is a file ``kvmodel dump`` wrote (its first line says so)."""
    try:
        with open(path, "rb") as f:
            return f.read(20).lstrip().startswith(b'{"kvmodel_dump"')
    except OSError:
        return False


@click.command()
@click.argument("store")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=4513,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option("--write", is_flag=True, help="Allow setting, editing and deleting entries.")
@click.option(
    "--models",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Import models (app.models or app.models:User) so their pages can check them.",
)
@click.option(
    "--scan-limit",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Keys one tree level or count reads at most; past it the page says it is partial.",
)
@click.pass_context
def browse(
    ctx: click.Context,
    store: str,
    host: str,
    port: int,
    write: bool,
    modules: tuple[str, ...],
    scan_limit: int,
) -> int:
    """Look at STORE in a web browser: keys, entries, models, queue; live.

    Prints the URL to open, http://127.0.0.1:PORT/?token=...; the token is
    new at each start and every request needs it. Read-only unless --write.
    STORE is any store the other commands open, or a file kvmodel dump wrote
    (loaded into memory: writes then change that copy only). Until Ctrl-C;
    the browse extra is needed: pip install 'kvmodel[browse]'.
    """
    from kvmodel.cli._app import _all_models, open_store

    try:
        import hypercorn  # noqa: F401  (imported by serve_app; missing, it is this extra's)

        from kvmodel.cli.browse._app import create_app
        from kvmodel.cli.browse._server import new_token, serve_app
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _EXTRA_MODULES:
            raise click.ClickException(INSTALL_HINT.format(name=exc.name)) from exc
        raise
    models = _all_models(modules)
    token = new_token()
    shown = store
    if store.startswith(("etcd://", "etcds://")):
        from kvmodel.engines.etcd import redact_url

        shown = redact_url(store)

    def run(kv: Any, name: str) -> None:
        app = create_app(
            kv,
            token=token,
            write=write,
            models=models,
            scan_limit=scan_limit,
            store_name=name,
            loopback_only=host in ("127.0.0.1", "localhost", "::1"),
        )

        def announce(bound: int) -> None:
            where = f"[{host}]" if ":" in host else host
            mode = "writes enabled" if write else "read-only"
            click.echo(f"kvmodel: browsing {name} ({mode}); open this URL, Ctrl-C stops:", err=True)
            click.echo(f"http://{where}:{bound}/?token={token}")

        serve_app(app, host=host, port=port, token=token, announce=announce)

    if os.path.isfile(store) and _is_dump(store):
        import kvmodel as km
        from kvmodel.cli._dump import load

        with km.open_kv(":memory:") as kv, open(store, encoding="utf-8") as lines:
            report = load(kv, lines, mode="strict", batch_size=1000, progress=lambda r: None)
            click.echo(
                f"kvmodel: loaded {report.written:,} entries of {store} into memory.", err=True
            )
            run(kv, f"{store} (a dump, in memory)")
        return 0
    with open_store(ctx, store) as kv:
        run(kv, shown)
    return 0
