"""Deno's KV Connect protocol: serve a kvmodel store to Deno, or open a remote database.

* :func:`create_app` (server side) builds the ASGI application ``kvmodel
  serve`` runs, so ``Deno.openKv("http://host:port")`` works on any kvmodel
  store.
* ``km.open_kv("https://...", token=...)`` (client side) runs kvmodel on a
  KV Connect server through :class:`kvmodel.engines.connect.ConnectEngine`.

Both need the ``connect`` extra (``pip install 'kvmodel[connect]'``: protobuf,
starlette, hypercorn, httpx). The message classes are generated from denokv's
``proto/schema/datapath.proto`` (``_datapath_pb2.py``).
"""

from __future__ import annotations

from kvmodel.connect._server import ValuesMode, create_app, serve

__all__ = ["ValuesMode", "create_app", "serve"]
