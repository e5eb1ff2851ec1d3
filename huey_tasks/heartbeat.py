"""The heartbeat of a worker process: what keeps its claims alive while its tasks run.

``LeasingHuey`` mixes this in. Each claimed message whose task runs here is a ``Running``
entry; tasks also ``hold`` other leases (provider slots, job claims), each group extended by
its registered keeper. Two daemon threads beat for as long as the process lives: one extends
the messages' leases and the held items of the queue storage, and one extends the job claims
in the database on its own clock, so a stalled MongoDB cannot let a job claim run out under
a live provider call, nor a stalled database stop the message leases. Past its deadline a
task's leases are no longer extended, its message is acked and ``SIGNAL_DEADLINE`` is sent.

A beat that crashes (anything raised out of it) is logged, counted for the metrics, and
this process claims no new message until that heartbeat beats again: a task claimed while
nothing extends its lease would be delivered again while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

import pymongo

from cms.redaction import redact

from .storage import MongoStorage
from .storage.base import Delivery

logger = logging.getLogger(__name__)

# Karasu's signal for a task past its deadline, sent like Huey's: handler(signal, task,
# deadline in seconds).
SIGNAL_DEADLINE = "deadline-exceeded"

# The two heartbeats of a worker process: message leases (with provider slots), and the job
# claims on a thread of their own. A crashed one beats again after this pause.
LEASE_HEARTBEAT = "lease"
CLAIM_HEARTBEAT = "claims"
HEARTBEAT_RESTART_DELAY = 1.0

# Keeper: extend these held items for ``seconds``; return the ones that were lost.
Keeper = Callable[[list, float], Iterable]


@dataclass(eq=False)
class Running:
    """A claimed message whose task runs in this process."""

    task: object
    delivery: Delivery
    deadline: float  # time.monotonic()
    thread: int | None = None
    lost: bool = False
    holds: set[tuple[str, Hashable]] = field(default_factory=set)


def readable_message(exc: BaseException) -> str:
    """The error's message, redacted, or a note that it could not be read."""
    try:
        return redact(str(exc))
    except Exception:
        return "its message could not be read"


class CrashCounter:
    """Counts a process's heartbeat crashes for the metrics, from one thread of its own.

    A count is a database write (through ``signals.heartbeat_crashed``), so it is not made
    on a heartbeat's thread: a database that hangs must not keep the heartbeat from beating
    again. Nor is it made on a thread per crash, as those would pile up while a heartbeat
    keeps crashing and the database hangs. Crashes noted while a count is being made wait
    their turn, and each is counted once when the database answers again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._pending: dict[str, tuple[int, BaseException]] = {}  # uncounted, last error
        self._thread: threading.Thread | None = None

    def add(self, heartbeat: str, error: BaseException) -> None:
        """Count a crash of ``heartbeat`` soon. Never raises: a crash that cannot be counted
        (no thread could be started, say) waits for the next one, which tries again."""
        try:
            with self._lock:
                crashes, _ = self._pending.get(heartbeat, (0, error))
                self._pending[heartbeat] = (crashes + 1, error)
                if self._thread is None or not self._thread.is_alive():
                    # Started under the lock, so two crashes at once start one thread.
                    self._thread = threading.Thread(
                        target=self._count_forever, name="karasu-heartbeat-crashes", daemon=True
                    )
                    self._thread.start()
            self._due.set()
        except BaseException:
            with contextlib.suppress(BaseException):
                logger.error("Could not count a crash of the %s heartbeat.", heartbeat)

    def _count_forever(self) -> None:
        while True:  # a daemon thread: it ends with the process
            self._due.wait()
            self._due.clear()
            with self._lock:
                pending, self._pending = self._pending, {}
            try:
                self._count(pending)
            except BaseException:
                with contextlib.suppress(BaseException):
                    heartbeats = ", ".join(sorted(pending))
                    logger.exception("Could not count crashes of the heartbeats: %s.", heartbeats)

    def _count(self, pending: dict[str, tuple[int, BaseException]]) -> None:
        from django.db import connections

        from .signals import report_heartbeat_crash

        try:
            for heartbeat, (crashes, error) in pending.items():
                for _ in range(crashes):  # the signal's contract: one call per crash
                    report_heartbeat_crash(heartbeat, error)
        finally:
            # Not kept open while no heartbeat crashes: a later count opens a fresh one.
            connections.close_all()


class HeartbeatMixin:
    """The heartbeat half of ``LeasingHuey``.

    The host (a Huey) provides ``storage`` (a leasing storage), ``idle``, ``task_deadline``
    and ``_emit``; it puts each claimed message's ``Running`` in ``_running`` and the task
    running in a thread in ``_current.running``, under ``_lock``.
    """

    def __init__(self, *args, **kwargs):
        self._running: dict[int, Running] = {}  # id(task) -> lease; duplicates share ids
        self._free_holds: set[tuple[str, Hashable]] = set()  # held outside a consumer task
        self._lost: set[tuple[str, Hashable]] = set()
        self._keepers: dict[str, Keeper] = {}
        self._own_thread_groups: set[str] = set()  # kept by the claim keeper thread
        self._claims_due = threading.Event()
        self._beats_in_progress = 0
        self._current = threading.local()
        self._lock = threading.Lock()
        self._heartbeat_pid: int | None = None
        self._heartbeats_down: set[str] = set()  # crashed, and not beating again yet
        self._crash_counter = CrashCounter()
        super().__init__(*args, **kwargs)

    # Other leases a task keeps alive --------------------------------------------------
    def register_keeper(self, group: str, keeper: Keeper, own_thread: bool = False) -> None:
        """``keeper(items, seconds)`` extends held items of ``group``, returns lost ones.

        ``own_thread``: kept by a thread of their own (the database's job claims), so that
        neither a stalled queue storage nor a stalled database holds up the other.
        """
        self._keepers[group] = keeper
        if own_thread:
            self._own_thread_groups.add(group)

    def hold(self, group: str, item: Hashable) -> None:
        """Keep ``item`` alive with the running task's lease (until its deadline)."""
        running = getattr(self._current, "running", None)
        with self._lock:
            (running.holds if running is not None else self._free_holds).add((group, item))
        self._ensure_heartbeat()

    def drop(self, group: str, item: Hashable) -> None:
        running = getattr(self._current, "running", None)
        with self._lock:
            (running.holds if running is not None else self._free_holds).discard((group, item))
            self._lost.discard((group, item))

    def is_lost(self, group: str, item: Hashable) -> bool:
        """Whether the heartbeat found ``item`` taken over (or stopped keeping it)."""
        return (group, item) in self._lost

    # Heartbeat ----------------------------------------------------------------------
    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_pid == os.getpid():
            return
        with self._lock:
            if self._heartbeat_pid == os.getpid():
                return
            # A forked child starts heartbeats of its own, and a reporter: the threads that
            # would have cleared the parent's crashes, or counted them, stayed behind.
            self._heartbeat_pid = os.getpid()
            self._heartbeats_down.clear()
            self._crash_counter = CrashCounter()
            for heartbeat, beat_once, name in (
                (LEASE_HEARTBEAT, self._lease_beat, "huey-lease-heartbeat"),
                (CLAIM_HEARTBEAT, self._claim_beat, "huey-claim-heartbeat"),
            ):
                threading.Thread(
                    target=self._keep_beating, args=(heartbeat, beat_once), name=name, daemon=True
                ).start()

    def _keep_beating(self, heartbeat: str, beat_once: Callable[[], None]) -> None:
        """Run a heartbeat for as long as the process lives: it never ends silently.

        A crash (anything raised out of one beat) is logged, counted for the metrics
        (``signals.heartbeat_crashed``) and stops this process claiming new messages until
        the heartbeat has beaten again, a moment later: a task claimed while nothing
        extends its lease would be delivered again while it runs. Neither the crash's report
        nor the note that it beats again can raise, so the loop only ends with the process.
        """
        while True:  # a daemon thread: it ends with the process
            try:
                beat_once()
            except BaseException as exc:  # even SystemExit: this thread must not end
                self._heartbeat_crashed(heartbeat, exc)
                time.sleep(HEARTBEAT_RESTART_DELAY)  # not the lease's: it may be the fault
            else:
                self._heartbeat_back(heartbeat)

    def _lease_beat(self) -> None:
        time.sleep(self.storage.lease_seconds / 3)
        self.beat()

    def _claim_beat(self) -> None:
        """The job claims' heartbeat: every third of a lease, and at each heartbeat.

        On its own clock, so a heartbeat stuck in a storage call does not let a claim run
        out under a live provider call. It keeps claims only while the heartbeat is alive
        (a beat began since, or one is in progress): a process whose heartbeat stopped
        keeps nothing, as before.
        """
        kicked = self._claims_due.wait(self.storage.lease_seconds / 3)
        self._claims_due.clear()
        if kicked or self._beats_in_progress:
            self._extend_holds(self._held(self._own_thread_groups))

    def _heartbeat_crashed(self, heartbeat: str, exc: BaseException) -> None:
        """Note, log and count a crash of ``heartbeat``. Never raises: whatever fails here
        (a log handler, an error whose message cannot be read) must not end the thread
        with the heartbeat marked down, which would stop this worker claiming for good."""
        with self._lock:
            first = heartbeat not in self._heartbeats_down
            self._heartbeats_down.add(heartbeat)
        try:
            # The traceback once per outage of the heartbeat; a line for each crash after it.
            logger.error(
                "The %s heartbeat crashed (%s: %s); this worker claims no new task until it "
                "beats again.",
                heartbeat,
                exc.__class__.__name__,
                readable_message(exc),
                exc_info=exc if first else None,
            )
        except BaseException:
            with contextlib.suppress(BaseException):
                # A shorter line without the error, in case it was the error that failed.
                logger.error("The %s heartbeat crashed; its report could not be logged.", heartbeat)
        self._crash_counter.add(heartbeat, exc)

    def _heartbeat_back(self, heartbeat: str) -> None:
        """Note that ``heartbeat`` beat again after a crash. Never raises, as above."""
        if heartbeat not in self._heartbeats_down:
            return
        with self._lock:
            self._heartbeats_down.discard(heartbeat)
            still_down = sorted(self._heartbeats_down)
        # The heartbeat is back whether or not its log can be written.
        with contextlib.suppress(BaseException):
            if still_down:
                logger.warning("The %s heartbeat beats again.", heartbeat)
            else:
                logger.warning(
                    "The %s heartbeat beats again; this worker claims tasks again.", heartbeat
                )
        if not still_down:
            with contextlib.suppress(BaseException):
                self.idle.wake()  # an idle thread looks at the queue now

    @property
    def heartbeat_down(self) -> bool:
        """Whether a heartbeat of this process crashed and has not beaten again since.

        A forked child has not: its parent's crashes are no longer its own, and it starts
        heartbeats of its own with its first claim."""
        return bool(self._heartbeats_down) and self._heartbeat_pid == os.getpid()

    def _held(self, groups: set[str]) -> set[tuple[str, Hashable]]:
        with self._lock:
            holds = (
                set(self._free_holds).union(*(r.holds for r in self._running.values())) - self._lost
            )
        return {hold for hold in holds if hold[0] in groups}

    def _storage_deadline(self):
        """Bound every MongoDB call of one heartbeat together (pymongo's own timeout), so a
        stalled server delays the next beat by a third of a lease at most."""
        if isinstance(self.storage, MongoStorage):
            return pymongo.timeout(self.storage.lease_seconds / 3)
        return contextlib.nullcontext()

    def beat(self) -> None:
        """One heartbeat: extend what is held, enforce deadlines, note what was lost."""
        with self._lock:
            self._beats_in_progress += 1
        self._claims_due.set()  # the job claims, on their own thread
        try:
            self._beat()
        finally:
            with self._lock:
                self._beats_in_progress -= 1

    def _beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [r for r in self._running.values() if now > r.deadline]
            for running in overdue:
                del self._running[id(running.task)]
                self._lost.update(running.holds)
            live = [r for r in self._running.values() if not r.lost]
            # A task whose message was taken over still runs here: its job claim and its
            # slot stay alive until it ends (or its deadline), so the new holder of the
            # message finds the job busy instead of making a second call while this one runs.
            holds = (
                set(self._free_holds).union(*(r.holds for r in self._running.values())) - self._lost
            )
        holds = {hold for hold in holds if hold[0] not in self._own_thread_groups}
        with self._storage_deadline():
            self._extend_holds(holds)
            self._extend_leases(live)
            for running in overdue:
                if not running.lost:  # a lost one is another worker's now: not ours to fail
                    self._expire(running)

    def _extend_holds(self, holds: set[tuple[str, Hashable]]) -> None:
        by_group: dict[str, list] = {}
        for group, item in holds:
            by_group.setdefault(group, []).append(item)
        for group, items in by_group.items():
            keeper = self._keepers.get(group)
            if keeper is None:
                continue
            try:
                lost = {(group, item) for item in keeper(items, self.storage.lease_seconds)}
            except Exception:
                logger.exception("Heartbeat could not extend %s; will retry.", group)
                continue
            with self._lock:  # not what was dropped meanwhile (its task finished)
                held = self._free_holds.union(*(r.holds for r in self._running.values()))
                lost &= held
                self._lost.update(lost)
            if lost:
                logger.warning("Lost %d %s leases to other workers.", len(lost), group)

    def _extend_leases(self, live: list[Running]) -> None:
        if not live:
            return
        # A message claimed twice here (its lease ran out while the heartbeat stalled, then
        # another thread claimed it): the later claim holds it, the earlier one lost it.
        leases = {r.delivery.message_id: r.delivery.token for r in live}
        try:
            lost_ids = self.storage.extend_leases(leases)
        except Exception:
            logger.exception("Lease heartbeat failed; will retry.")
            return
        for running in live:
            message_id, token = running.delivery.message_id, running.delivery.token
            if running.lost or (message_id not in lost_ids and leases[message_id] == token):
                continue
            with self._lock:
                if id(running.task) not in self._running:
                    continue  # settled meanwhile (acked): not lost
                running.lost = True  # its holds stay kept: see beat()
                logger.warning(
                    "Lost the lease of task %s to another worker; it will not be acked here.",
                    running.task.id,
                )

    def _expire(self, running: Running) -> None:
        task, delivery = running.task, running.delivery
        task.past_deadline = True  # what the task reports later is no longer its outcome
        logger.error("Task %s passed its %.0f s deadline; failing it.", task.id, self.task_deadline)
        try:
            self.storage.ack(delivery.message_id, delivery.token)
        except Exception:
            logger.exception("Could not ack %s after its deadline.", task.id)
        # On a thread of its own: the deadline's handlers write to the database, and a
        # database that hangs must not stop the heartbeat renewing the other leases.
        threading.Thread(
            target=self._announce_deadline,
            args=(task,),
            daemon=True,
            name=f"karasu-deadline-{task.id}",
        ).start()

    def _announce_deadline(self, task) -> None:
        try:
            self._emit(SIGNAL_DEADLINE, task, self.task_deadline)
        except Exception:
            logger.exception("Could not announce the deadline of %s.", task.id)
