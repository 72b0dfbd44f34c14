"""kvmodel for asyncio: the same API with ``await``.

>>> import asyncio
>>> from kvmodel import aio
>>> async def main():
...     async with await aio.open_kv() as kv:
...         await kv.set(("greeting",), "hello")
...         return (await kv.get(("greeting",))).value
>>> asyncio.run(main())
'hello'
"""

from __future__ import annotations

from kvmodel.aio._kv import (
    AsyncAtomicOperation,
    AsyncKv,
    AsyncListIterator,
    AsyncWatchIterator,
    OpeningKv,
    open_kv,
)
from kvmodel.aio._model_watch import AsyncModelWatch, AsyncModelWatchMany
from kvmodel.aio._query import AsyncQuery
from kvmodel.aio._session import AsyncSession, transaction

__all__ = [
    "AsyncAtomicOperation",
    "AsyncKv",
    "AsyncListIterator",
    "AsyncModelWatch",
    "AsyncModelWatchMany",
    "AsyncQuery",
    "AsyncSession",
    "AsyncWatchIterator",
    "OpeningKv",
    "open_kv",
    "transaction",
]
