"""GroupCommitter: concurrent commits of one process share one transaction and one fsync.

At ``synchronous=FULL`` a commit costs one fsync of the WAL, and the disk does
only so many of those a second, whatever the number of threads waiting on it.
Commits that arrive while another is being written therefore queue up and the
next writer to lead takes every one of them into a single transaction: one
``BEGIN IMMEDIATE``, one ``COMMIT``, one fsync for the lot.

The scheme is LevelDB's writer queue (``DBImpl::Write``):

* Every commit joins a FIFO queue. A commit that finds the queue empty leads
  at once: a lone writer never waits for company, so its latency is the
  latency of a plain commit.
* A commit that finds others in the queue sleeps until it is either done (a
  leader committed it) or at the front of the queue (then it leads).
* The leader takes the queue's first ``max_group`` commits (its own first),
  fewer when their records pass ``max_weight`` (a large commit of
  ``limits="embedded"`` then leads a group of its own, or nearly),
  runs them as one group, takes them off the queue, hands each follower its
  result and wakes the next commit in the queue, which leads the next group:
  commits that arrived while this group was being written.
* The next leader, not this one, wakes this group's followers, just before
  its own COMMIT (:meth:`GroupCommitter.wake_previous`). Woken at once, the
  followers would take the GIL between the next leader's SQL statements to
  prepare their next commits; woken then, they do it during its fsync, when
  the GIL is free. Measured with 16 threads on 2 cores: 13.0-13.3k ``set``
  commits/s became 14.4-16.6k, and 7.9-8.3k ``atomic_order`` commits 10.3k.

Nobody is acknowledged before the group's transaction returned: a follower
learns its outcome only from the leader, after ``run_group`` came back.
The committer knows nothing of SQLite; ``run_group`` takes the group's items
in order and returns one result (or one exception, for that item alone) each.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from kvmodel.errors import EngineError

__all__ = ["MAX_GROUP", "MAX_GROUP_WEIGHT", "GroupCommitter"]

_I = TypeVar("_I")
_R = TypeVar("_R")

MAX_GROUP = 128
"""Most commits served by one transaction, so one group's latency stays bounded."""
MAX_GROUP_WEIGHT = 150_000
"""Most records (checks, mutations, enqueues) of one group's commits, for the same reason.

128 commits at Deno's limits weigh at most 140,800, so groups of ordinary
commits are bounded by ``MAX_GROUP`` alone; a commit of ``limits="embedded"``
(up to 150,000 records) shares a group only with small ones, never with
another of its size. A commit heavier than the budget still runs, alone.
"""


class _Waiter(Generic[_I, _R]):
    """One commit in the queue; ``wake`` exists only when it had to wait."""

    __slots__ = ("done", "error", "item", "result", "run_group", "wake")

    def __init__(self, item: _I, run_group: Callable[[Sequence[_I]], list[_R | Exception]]) -> None:
        self.item = item
        self.run_group = run_group
        self.done = False
        self.result: _R | None = None
        self.error: BaseException | None = None
        self.wake: threading.Lock | None = None


class GroupCommitter(Generic[_I, _R]):
    """Serves the commits of concurrent threads in groups, one group at a time.

    >>> committer: GroupCommitter[int, int] = GroupCommitter()
    >>> committer.submit(20, lambda items: [item * 2 for item in items])
    40
    """

    def __init__(
        self,
        *,
        max_group: int = MAX_GROUP,
        weight: Callable[[_I], int] | None = None,
        max_weight: int = MAX_GROUP_WEIGHT,
    ) -> None:
        # weight: the records of an item, for the group budget (None: no budget).
        self._max_group = max_group
        self._weight = weight
        self._max_weight = max_weight
        self._mutex = threading.Lock()
        self._queue: deque[_Waiter[_I, _R]] = deque()
        # Followers of the previous group, left for the current leader to wake.
        self._handed: list[_Waiter[_I, _R]] = []
        # Holds the front of the queue while a lone commit runs (see submit).
        self._alone: _Waiter[_I, _R] = _Waiter(None, None)  # type: ignore[arg-type]
        # Figures for tests and benchmarks: groups run, and commits they served.
        self.groups = 0
        self.commits = 0

    def submit(self, item: _I, run_group: Callable[[Sequence[_I]], list[_R | Exception]]) -> _R:
        """Commits ``item``, alone or in a group; returns its result once the group is durable.

        ``run_group`` is called by whichever thread leads the group, with the
        items of the group in queue order. An exception it returns in an
        item's place is raised to that item's caller alone; an exception it
        raises is raised to every caller of the group.
        """
        queue = self._queue
        with self._mutex:
            if not queue:
                # Nobody else: commit at once, the one place of the queue held
                # by a marker so that commits arriving meanwhile wait behind it.
                queue.append(self._alone)
                waiter = None
            else:
                waiter = _Waiter(item, run_group)
                queue.append(waiter)
                wake = waiter.wake = threading.Lock()
                wake.acquire()
        if waiter is None:
            return self._commit_alone(item, run_group)
        interrupted: BaseException | None = None
        if waiter.wake is not None:
            # Released when done, or when this commit leads. A KeyboardInterrupt
            # must not end the wait: the commit stays queued, and when it reaches
            # the front nobody would lead, stalling every commit behind it. So
            # wait on (a group takes milliseconds) and raise the interrupt after.
            while True:
                try:
                    waiter.wake.acquire()
                    break
                except BaseException as exc:
                    interrupted = exc
        if not waiter.done:
            self._lead()
        if interrupted is not None:
            raise interrupted
        return self._outcome(waiter)

    def _commit_alone(
        self, item: _I, run_group: Callable[[Sequence[_I]], list[_R | Exception]]
    ) -> _R:
        """The lone writer's commit: a group of one with none of the queue's bookkeeping."""
        try:
            result = run_group((item,))[0]
        finally:
            with self._mutex:
                queue = self._queue
                queue.popleft()
                following = queue[0] if queue else None
                self.groups += 1
                self.commits += 1
            if following is not None:  # it arrived meanwhile: it leads the next group
                assert following.wake is not None
                following.wake.release()
        if isinstance(result, Exception):
            raise result
        return result

    def _lead(self) -> None:
        """Runs the group at the front of the queue, then hands over to the next leader."""
        with self._mutex:
            queue = self._queue
            size = len(queue)
            group = [queue[0]] if size == 1 else list(itertools.islice(queue, self._max_group))
            if self._weight is not None and len(group) > 1:
                group = self._within_budget(group)
        try:
            try:
                # The leader's own function runs the group (every caller passes
                # the same one; the committer keeps none, so no reference cycle).
                results = group[0].run_group([w.item for w in group])
            except Exception as exc:
                results = [exc if i == 0 else _copy_error(exc) for i in range(len(group))]
            except BaseException as exc:
                # KeyboardInterrupt or SystemExit in the leading thread: whether
                # the transaction committed is unknown, so say so to the others.
                group[0].error = exc
                for w in group[1:]:
                    w.error = EngineError(
                        "The thread committing a group of commits was interrupted "
                        f"({type(exc).__name__}); this commit may or may not have been "
                        "applied: read the keys again before retrying it."
                    )
                results = []
            for w, result in zip(group, results, strict=False):
                if isinstance(result, Exception):
                    w.error = result
                else:
                    w.result = result
        finally:
            # The previous group's followers, if this leader has not woken them yet.
            self.wake_previous()
            followers = group[1:]
            for w in followers:
                w.done = True
            with self._mutex:
                for _ in group:
                    queue.popleft()
                following = queue[0] if queue else None
                self.groups += 1
                self.commits += len(group)
            if following is None:
                for w in followers:
                    assert w.wake is not None
                    w.wake.release()
            else:
                # The next leader starts its transaction at once and wakes these
                # followers itself just before its COMMIT (wake_previous): their
                # Python work then runs during its fsync instead of taking the
                # GIL between its statements.
                self._handed = followers
                assert following.wake is not None
                following.wake.release()

    def _within_budget(self, group: list[_Waiter[_I, _R]]) -> list[_Waiter[_I, _R]]:
        """The longest head of ``group`` within the weight budget (at least its leader)."""
        weight = self._weight
        assert weight is not None
        total = 0
        for n, w in enumerate(group):
            total += weight(w.item)
            if total > self._max_weight and n > 0:
                return group[:n]
        return group

    def wake_previous(self) -> None:
        """Wakes the followers of the previous group, whose commits are durable already.

        The leader of a group calls it just before its own COMMIT (and the
        committer calls it again, harmlessly, when the group ends). Only the
        current leader touches the list: the previous leader filled it before
        handing over.
        """
        handed = self._handed
        if handed:
            self._handed = []
            for w in handed:
                assert w.wake is not None
                w.wake.release()

    @staticmethod
    def _outcome(waiter: _Waiter[_I, _R]) -> _R:
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[return-value]


def _copy_error(exc: Exception) -> Exception:
    """A copy of a group-wide error for one follower, so no two threads raise one object."""
    try:
        twin = copy.copy(exc)
    except Exception:  # an exception class copy cannot rebuild
        return exc
    twin.__cause__ = exc.__cause__
    twin.__suppress_context__ = exc.__suppress_context__
    return twin
