"""One conformance suite for every Karasu queue storage (SQLite, mongomock, real MongoDB)."""

import datetime
import logging
import os
import queue
import sqlite3
import threading
import time

import pytest
from huey.constants import EmptyData

from huey_tasks.storage import mongo as mongo_module
from huey_tasks.storage.base import DeadLetter

UTC = datetime.UTC
SECOND = datetime.timedelta(seconds=1)


def now():
    return datetime.datetime.now(UTC).replace(tzinfo=None)


def run_concurrently(target, count: int) -> None:
    """Run target(i) for i in range(count) in as many threads, and wait for them all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def bury(storage, data: bytes = b"poison", priority=None) -> None:
    """Enqueue ``data`` and let all its leases (max_deliveries=3) run out unacked."""
    storage.enqueue(data, priority)
    for _ in range(3):
        assert storage.claim(lease_seconds=0.01).data == data
        time.sleep(0.02)


# Queue --------------------------------------------------------------------------------
def test_priority_then_fifo_order(storage):
    for data, priority in [(b"a", None), (b"b", 1), (b"c", None), (b"d", 5), (b"e", 1)]:
        storage.enqueue(data, priority)
    assert storage.queue_size() == 5
    assert storage.enqueued_items() == [b"d", b"b", b"e", b"a", b"c"]
    assert storage.enqueued_items(limit=2) == [b"d", b"b"]
    assert [storage.dequeue() for _ in range(6)] == [b"d", b"b", b"e", b"a", b"c", None]


def test_enqueue_many_keeps_order(storage):
    storage.enqueue(b"first")
    storage.enqueue_many([b"a", b"b", b"c"])
    storage.enqueue_many([b"urgent"], priority=9)
    storage.enqueue_many([])
    assert [storage.dequeue() for _ in range(6)] == [b"urgent", b"first", b"a", b"b", b"c", None]


def test_flush_queue(storage):
    storage.enqueue(b"x")
    storage.flush_queue()
    assert storage.queue_size() == 0
    assert storage.dequeue() is None


def test_claim_leases_instead_of_deleting(storage):
    storage.enqueue(b"job")
    delivery = storage.claim()
    assert delivery.data == b"job" and delivery.deliveries == 1
    assert isinstance(delivery.token, str) and len(delivery.token) == 32
    # Leased: not deliverable, not counted as queued, counted as running.
    assert storage.claim() is None
    assert storage.queue_size() == 0
    assert storage.leased_count() == 1
    assert storage.ack(delivery.message_id, delivery.token) is True
    assert storage.leased_count() == 0
    assert storage.ack(delivery.message_id, delivery.token) is False


def test_expired_lease_is_redelivered_with_count_raised(storage):
    storage.enqueue(b"job")
    first = storage.claim(lease_seconds=0.05)
    time.sleep(0.1)
    second = storage.claim()
    assert second is not None
    assert second.message_id == first.message_id
    assert second.deliveries == 2
    assert second.token != first.token  # a fresh token per claim


def test_stale_token_cannot_touch_the_new_holders_claim(storage):
    storage.enqueue(b"job")
    stale = storage.claim(lease_seconds=0.05)
    time.sleep(0.1)
    fresh = storage.claim()  # the lease ran out: another worker takes the message over
    assert fresh.message_id == stale.message_id
    assert storage.ack(stale.message_id, stale.token) is False
    assert storage.release(stale.message_id, stale.token) is False
    assert storage.extend_leases({stale.message_id: stale.token}) == {stale.message_id}
    # The new holder's claim is untouched: still leased, still its own.
    assert storage.leased_count() == 1
    assert storage.claim() is None
    assert storage.extend_leases({fresh.message_id: fresh.token}) == set()
    assert storage.ack(fresh.message_id, fresh.token) is True


def test_expired_lease_nobody_took_is_still_its_holders(storage):
    storage.enqueue(b"job")
    delivery = storage.claim(lease_seconds=0.05)
    time.sleep(0.1)
    assert storage.extend_leases({delivery.message_id: delivery.token}, 30) == set()
    assert storage.claim() is None
    assert storage.ack(delivery.message_id, delivery.token) is True


def test_no_token_matches_an_unclaimed_message(storage):
    storage.enqueue(b"job")
    delivery = storage.claim()
    assert storage.release(delivery.message_id, delivery.token) is True
    for token in (None, ""):
        assert storage.ack(delivery.message_id, token) is False
        assert storage.release(delivery.message_id, token) is False
        assert storage.extend_leases({delivery.message_id: token}) == {delivery.message_id}
    assert storage.ack("not-an-id", delivery.token) is False
    assert storage.queue_size() == 1


def test_heartbeat_extends_lease(storage):
    storage.enqueue(b"job")
    delivery = storage.claim(lease_seconds=0.2)
    assert storage.extend_leases({delivery.message_id: delivery.token}, lease_seconds=30) == set()
    time.sleep(0.3)
    assert storage.claim() is None
    assert storage.extend_leases({}) == set()


def test_extend_leases_reports_lost_ids(storage):
    for data in (b"held", b"acked", b"released", b"retaken"):
        storage.enqueue(data)
    held, acked, released = storage.claim(), storage.claim(), storage.claim()
    retaken = storage.claim(lease_seconds=0.05)
    assert storage.ack(acked.message_id, acked.token)
    assert storage.release(released.message_id, released.token)
    time.sleep(0.1)
    assert storage.claim().message_id in {released.message_id, retaken.message_id}
    assert storage.claim().message_id in {released.message_id, retaken.message_id}
    leases = {d.message_id: d.token for d in (held, acked, released, retaken)}
    leases["not-an-id"] = held.token
    lost = storage.extend_leases(leases, lease_seconds=30)
    assert lost == {acked.message_id, released.message_id, retaken.message_id, "not-an-id"}
    assert storage.ack(held.message_id, held.token) is True


def test_release_hands_back_without_counting(storage):
    storage.enqueue(b"job")
    delivery = storage.claim()
    assert storage.release(delivery.message_id, delivery.token) is True
    assert storage.release(delivery.message_id, delivery.token) is False  # token cleared
    again = storage.claim()
    assert again.message_id == delivery.message_id
    assert again.deliveries == 1


def test_release_with_a_delay_backs_off_and_never_counts(storage):
    """A worker that could not reach the database hands its message back for later: not
    deliverable until then, never a step towards the dead letters however often."""
    storage.enqueue(b"job")
    for _ in range(storage.max_deliveries + 2):  # more hand-backs than deliveries allowed
        delivery = storage.claim()
        assert delivery is not None and delivery.deliveries == 1
        assert storage.release(delivery.message_id, delivery.token, delay=0.2) is True
        # Waiting: not claimable, not running, and still counted by the storage.
        assert storage.claim() is None
        assert storage.leased_count() == 0 and storage.queue_size() == 0
        assert storage.schedule_size() == 1
        assert storage.all_messages() == [b"job"]
        time.sleep(0.25)
        storage.promote_due(now())
    assert storage.dead_letter_count() == 0
    again = storage.claim()
    # Fenced: only the holder's token hands back, and only once.
    assert storage.release(again.message_id, "someone-else", delay=5) is False
    assert storage.release(again.message_id, again.token, delay=5) is True
    assert storage.release(again.message_id, again.token, delay=5) is False
    assert storage.claim() is None


def test_dead_letter_after_max_deliveries(storage):
    storage.enqueue(b"poison")
    storage.enqueue(b"fine")
    for _ in range(3):  # max_deliveries=3 in this fixture
        delivery = storage.claim(lease_seconds=0.01)
        assert delivery.data == b"poison"
        time.sleep(0.02)
    # The fourth delivery would exceed the limit: buried, and the next message comes out.
    assert storage.claim().data == b"fine"
    assert storage.dead_letter_count() == 1
    [dead] = storage.dead_letters()
    assert dead.data == b"poison" and dead.deliveries == 3
    assert "3 deliveries" in dead.reason
    assert isinstance(dead.died_at, datetime.datetime)

    assert storage.requeue_dead_letter(dead.message_id) is True
    assert storage.requeue_dead_letter(dead.message_id) is False
    assert storage.dead_letter_count() == 0
    requeued = storage.claim()
    assert requeued.data == b"poison" and requeued.deliveries == 1


def test_burial_calls_on_dead_letter_once(storage):
    letters: list[DeadLetter] = []
    storage.on_dead_letter = letters.append
    storage.enqueue(b"poison", 4)
    claimed = []
    for _ in range(3):
        claimed.append(storage.claim(lease_seconds=0.01))
        time.sleep(0.02)
    assert {d.message_id for d in claimed} == {claimed[0].message_id}
    assert storage.claim() is None  # buries
    assert storage.claim() is None
    [letter] = letters
    [stored] = storage.dead_letters()
    assert letter == stored
    assert letter.data == b"poison" and letter.deliveries == 3 and letter.priority == 4
    assert "3 deliveries" in letter.reason
    assert letter.died_at.tzinfo is not None
    assert abs(letter.died_at.timestamp() - time.time()) < 5
    assert letter.message_id == claimed[0].message_id


def test_failing_on_dead_letter_does_not_break_claim(storage, caplog):
    def fail(letter):
        raise RuntimeError("monitor down")

    storage.on_dead_letter = fail
    bury(storage, b"poison")
    storage.enqueue(b"fine")
    with caplog.at_level(logging.ERROR, logger="huey_tasks.storage.base"):
        assert storage.claim().data == b"fine"
    assert storage.dead_letter_count() == 1
    assert any("monitor down" in (r.exc_text or "") for r in caplog.records)


def test_requeue_keeps_priority_and_is_idempotent(storage):
    bury(storage, b"urgent", priority=7)
    assert storage.claim() is None
    [dead] = storage.dead_letters()
    assert dead.priority == 7
    storage.enqueue(b"normal", 1)
    assert storage.requeue_dead_letter(dead.message_id) is True
    assert storage.requeue_dead_letter(dead.message_id) is False
    assert storage.requeue_dead_letter("not-an-id") is False
    assert storage.queue_size() == 2
    first = storage.claim()
    assert first.data == b"urgent" and first.deliveries == 1
    assert storage.claim().data == b"normal"
    assert storage.claim() is None


def test_requeue_after_a_crash_between_insert_and_delete(storage, backend):
    if backend == "sqlite":
        pytest.skip("SQLite requeues in one transaction: there is no in-between")
    bury(storage, b"poison")
    assert storage.claim() is None
    [dead] = storage.dead_letters()
    stored = storage.dead.find_one({})
    assert storage.requeue_dead_letter(dead.message_id) is True
    storage.dead.insert_one(stored)  # the state a crash after the insert leaves
    assert storage.requeue_dead_letter(dead.message_id) is True  # resolved via the _id
    assert storage.dead_letter_count() == 0
    assert storage.queue_size() == 1
    assert storage.claim().deliveries == 1
    assert storage.claim() is None


def test_requeue_after_a_crash_during_burial(storage, backend):
    if backend == "sqlite":
        pytest.skip("SQLite buries in one transaction: there is no in-between")
    bury(storage, b"poison")
    message = storage.messages.find_one({})
    assert storage.claim() is None
    storage.messages.insert_one({**message, "deliveries": 4})  # the burial's delete never ran
    [dead] = storage.dead_letters()
    assert storage.requeue_dead_letter(dead.message_id) is True
    assert storage.dead_letter_count() == 0
    assert storage.claim().deliveries == 1  # the fresh count, not buried again
    assert storage.claim() is None


def test_purge_dead_letters(storage):
    for data in (b"p1", b"p2", b"p3"):
        storage.enqueue(data)
    for _ in range(3):
        # A lease long enough to outlast three claims even on a slow server.
        assert len({storage.claim(lease_seconds=0.5).data for _ in range(3)}) == 3
        time.sleep(0.55)
    assert storage.claim() is None
    assert storage.dead_letter_count() == 3
    first = storage.dead_letters(limit=1)[0]
    assert storage.purge_dead_letters([first.message_id]) == 1
    assert storage.dead_letter_count() == 2
    assert storage.purge_dead_letters() == 2
    assert storage.dead_letters() == []


def test_concurrent_claims_never_share_a_message(storage):
    total = 200
    for i in range(total):
        storage.enqueue(str(i).encode())
    seen: list[bytes] = []
    lock = threading.Lock()

    def consume(_):
        while (delivery := storage.claim()) is not None:
            assert storage.ack(delivery.message_id, delivery.token)
            with lock:
                seen.append(delivery.data)

    run_concurrently(consume, 8)
    assert sorted(seen) == sorted(str(i).encode() for i in range(total))


def test_all_messages_are_queued_leased_and_scheduled(storage):
    assert storage.all_messages() == []
    bury(storage, b"dead")
    assert storage.claim() is None
    storage.enqueue(b"leased")
    assert storage.claim().data == b"leased"
    storage.enqueue(b"queued")
    storage.add_to_schedule(b"scheduled", now() + 60 * SECOND)
    storage.add_to_schedule(b"due", now() - SECOND)
    assert sorted(storage.all_messages()) == [b"due", b"leased", b"queued", b"scheduled"]


# Schedule -----------------------------------------------------------------------------
def test_schedule_returns_and_removes_only_what_is_due(storage):
    base = now()
    storage.add_to_schedule(b"later", base + datetime.timedelta(seconds=60))
    storage.add_to_schedule(b"due2", base - datetime.timedelta(seconds=1))
    storage.add_to_schedule(b"due1", base - datetime.timedelta(seconds=5))
    assert storage.schedule_size() == 3
    assert storage.scheduled_items() == [b"due1", b"due2", b"later"]
    assert storage.scheduled_items(limit=1) == [b"due1"]
    assert storage.read_schedule(base) == [b"due1", b"due2"]
    assert storage.read_schedule(base) == []
    assert storage.schedule_size() == 1
    storage.flush_schedule()
    assert storage.schedule_size() == 0


def test_promote_due_moves_schedule_to_queue(storage):
    base = now()
    storage.add_to_schedule(b"due", base - datetime.timedelta(seconds=1))
    storage.add_to_schedule(b"later", base + datetime.timedelta(seconds=60))
    assert storage.promote_due(base) == [b"due"]
    assert storage.promote_due(base) == []
    assert storage.schedule_size() == 1
    assert storage.queue_size() == 1
    assert storage.leased_count() == 0
    assert storage.enqueued_items() == [b"due"]
    assert storage.claim().data == b"due"
    assert storage.claim() is None  # "later" is not due


def test_scheduled_message_keeps_its_priority(storage):
    base = now()
    storage.add_to_schedule(b"low", base - 2 * SECOND)
    storage.add_to_schedule(b"high", base - SECOND, priority=7)
    storage.enqueue(b"mid", 3)
    storage.promote_due(base)
    assert [storage.dequeue() for _ in range(4)] == [b"high", b"mid", b"low", None]


def test_naive_datetimes_are_utc_whatever_the_local_zone(storage):
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "KAR-14"  # POSIX: local time is UTC+14, no tzdata needed
    time.tzset()
    try:
        base = now()  # naive UTC, as Huey passes with utc=True
        storage.add_to_schedule(b"in-1h", base + 3600 * SECOND)
        storage.add_to_schedule(b"no-eta", datetime.datetime.fromtimestamp(0))  # Huey's
        assert storage.promote_due(base) == [b"no-eta"]
        assert storage.promote_due(datetime.datetime.now(UTC)) == []
        delivery = storage.claim()
        assert delivery.data == b"no-eta"
        assert storage.ack(delivery.message_id, delivery.token)
        assert storage.claim() is None  # not due by the real clock either
        assert storage.promote_due(base + 3601 * SECOND) == [b"in-1h"]
    finally:
        if old_tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old_tz
        time.tzset()


def test_schedule_read_is_atomic_across_threads(storage):
    base = now()
    for i in range(100):
        storage.add_to_schedule(str(i).encode(), base - datetime.timedelta(seconds=1))
    results: list[list[bytes]] = []

    def read(_):
        results.append(storage.read_schedule(base))

    run_concurrently(read, 6)
    everything = [item for batch in results for item in batch]
    assert sorted(everything) == sorted(str(i).encode() for i in range(100))


def claim_and_ack_all(storage, delivered: list[bytes]) -> None:
    while (delivery := storage.claim()) is not None:
        assert storage.ack(delivery.message_id, delivery.token)
        delivered.append(delivery.data)


def test_promoted_and_acked_message_never_comes_back(storage, monkeypatch):
    base = now()
    storage.add_to_schedule(b"once", base - SECOND)
    delivered: list[bytes] = []
    storage.promote_due(base)
    claim_and_ack_all(storage, delivered)
    # Another scheduler, two minutes later (past any stale-claim timeout).
    clock = time.time
    monkeypatch.setattr(mongo_module, "time", type("Later", (), {"time": lambda: clock() + 120}))
    assert storage.promote_due(base + 120 * SECOND) == []
    claim_and_ack_all(storage, delivered)
    assert delivered == [b"once"]
    assert storage.all_messages() == []


def test_stalled_promoter_cannot_deliver_twice(storage, backend, monkeypatch):
    """Promoter A stalls between each two of its commands; meanwhile workers claim and ack
    everything, and promoter B runs two minutes later. Every item is delivered once."""
    if backend == "sqlite":
        pytest.skip("SQLite promotes in one transaction: there is no in-between to stall in")
    base = now()
    items = [f"item{i}".encode() for i in range(5)]
    for data in items:
        storage.add_to_schedule(data, base - SECOND)
    real = storage.messages
    to_main: queue.Queue = queue.Queue()
    to_a: queue.Queue = queue.Queue()
    a_thread: list[int] = []

    class Stalling:
        """The messages collection, pausing promoter A before each of its commands."""

        def __getattr__(self, name):
            attr = getattr(real, name)
            if not callable(attr) or threading.get_ident() not in a_thread:
                return attr

            def call(*args, **kwargs):
                to_main.put("paused")
                to_a.get(timeout=30)
                return attr(*args, **kwargs)

            return call

    def promoter_a():
        a_thread.append(threading.get_ident())
        try:
            storage.promote_due(base)
        finally:
            to_main.put("done")

    monkeypatch.setattr(storage, "messages", Stalling())
    delivered: list[bytes] = []
    clock = time.time
    later = type("Later", (), {"time": lambda: clock() + 120})
    thread = threading.Thread(target=promoter_a)
    thread.start()
    stalls = 0
    while to_main.get(timeout=30) == "paused":
        stalls += 1
        claim_and_ack_all(storage, delivered)
        with monkeypatch.context() as patch:
            patch.setattr(mongo_module, "time", later)
            storage.promote_due(base + 120 * SECOND)  # B, after A's claim went stale
            claim_and_ack_all(storage, delivered)
        to_a.put("go")
    thread.join()
    claim_and_ack_all(storage, delivered)
    assert stalls >= 1
    assert sorted(delivered) == items


def test_concurrent_promoters_and_workers_deliver_each_once(storage):
    base = now()
    items = [str(i).encode() for i in range(60)]
    for data in items:
        storage.add_to_schedule(data, base - SECOND)
    delivered: list[bytes] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def work(i):
        while time.monotonic() < deadline:
            with lock:
                if len(delivered) >= len(items):
                    return
            if i % 2:
                storage.promote_due(base)
                continue
            delivery = storage.claim()
            if delivery is not None:
                assert storage.ack(delivery.message_id, delivery.token)
                with lock:
                    delivered.append(delivery.data)

    run_concurrently(work, 6)
    assert sorted(delivered) == sorted(items)
    assert storage.promote_due(base + 3600 * SECOND) == []
    assert storage.claim() is None


# Key/value ----------------------------------------------------------------------------
def test_put_peek_pop_has(storage):
    assert storage.peek_data("k") is EmptyData
    assert storage.pop_data("k") is EmptyData
    storage.put_data("k", b"v1")
    storage.put_data("k", b"v2", is_result=True)
    assert storage.has_data_for_key("k")
    assert storage.peek_data("k") == b"v2"
    assert storage.peek_many(["k", "missing"]) == {"k": b"v2"}
    assert storage.result_store_size() == 1
    assert storage.result_items() == {"k": b"v2"}
    assert storage.pop_data("k") == b"v2"
    assert not storage.has_data_for_key("k")
    storage.put_data("x", b"1")
    assert storage.delete_data("x") is True
    assert storage.delete_data("x") is False
    storage.put_data("y", b"1")
    storage.flush_results()
    assert storage.result_store_size() == 0


# TTLs of a second: long enough that a slow storage (the MongoDB emulator on a loaded
# machine) cannot let one run out between two calls that expect it held.
TTL = 1.0


def test_put_if_empty_with_ttl(storage):
    assert storage.put_if_empty("lock", b"1", ttl=TTL) is True
    assert storage.put_if_empty("lock", b"2", ttl=TTL) is False
    assert storage.peek_data("lock") == b"1"
    time.sleep(TTL + 0.2)
    assert storage.has_data_for_key("lock") is False  # expired keys read as absent
    assert storage.put_if_empty("lock", b"3") is True
    assert storage.put_if_empty("lock", b"4", ttl=0.01) is False  # no ttl: never expires


def test_purge_results_deletes_old_results_and_expired_keys_only(storage):
    """Results retention (maintenance's RESULT_HOURS): a result written longer ago than the
    retention, and a key whose TTL has run out, are deleted; newer ones are kept."""
    storage.put_data("结果:old", "古い結果".encode(), is_result=True)
    storage.put_if_empty("lock:expired", b"1", ttl=0.05)
    time.sleep(0.3)
    storage.put_data("结果:new", "新しい結果".encode(), is_result=True)
    storage.put_if_empty("lock:held", b"1", ttl=60)
    assert storage.purge_results(older_than=0.2) == 2
    assert storage.peek_data("结果:old") is EmptyData
    assert storage.peek_data("结果:new") == "新しい結果".encode()
    assert storage.has_data_for_key("lock:held")
    assert storage.put_if_empty("lock:held", b"2", ttl=60) is False  # still held
    assert storage.purge_results(older_than=0.2) == 0  # nothing more is old enough
    assert storage.result_items() == {"结果:new": "新しい結果".encode(), "lock:held": b"1"}


def test_put_if_empty_race_has_one_winner(storage):
    winners: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i):
        barrier.wait()
        if storage.put_if_empty("race", str(i).encode(), ttl=30):
            winners.append(i)

    run_concurrently(contend, 8)
    assert len(winners) == 1
    assert storage.peek_data("race") == str(winners[0]).encode()


# Counters -----------------------------------------------------------------------------
def test_counters(storage):
    assert storage.incr("c") == 1
    assert storage.incr("c", 5) == 6
    storage.delete_counter("c")
    assert storage.incr("c") == 1
    storage.flush_counters()
    assert storage.incr("c") == 1


def test_incr_is_atomic_across_threads(storage):
    def bump(_):
        for _ in range(50):
            storage.incr("n")

    run_concurrently(bump, 4)
    assert storage.incr("n", 0) == 200


# Slots --------------------------------------------------------------------------------
def test_slots_limit_release_and_expiry(storage):
    assert storage.acquire_slot("fal", 2, "w1", ttl=30) == 0
    assert storage.acquire_slot("fal", 2, "w2", ttl=TTL) == 1
    assert storage.acquire_slot("fal", 2, "w3", ttl=30) is None
    assert storage.slots_in_use("fal") == 2
    assert storage.release_slot("fal", 0, "someone-else") is False
    assert storage.release_slot("fal", 0, "w1") is True
    assert storage.acquire_slot("fal", 2, "w3", ttl=30) == 0
    time.sleep(TTL + 0.2)  # w2 "crashed": its slot frees itself
    assert storage.slots_in_use("fal") == 1
    assert storage.extend_slot("fal", 1, "w2", ttl=30) is True  # still its holder
    assert storage.slots_in_use("fal") == 2


def test_a_released_slot_is_not_revived_by_a_stale_heartbeat(storage):
    """The heartbeat read the slot as held, then its task released it: the heartbeat's
    late extension must not bring it back (it would block the slot for a whole lease)."""
    index = storage.acquire_slot("fal", 1, "w1", ttl=30)
    assert storage.release_slot("fal", index, "w1") is True
    assert storage.extend_slot("fal", index, "w1", ttl=30) is False
    assert storage.slots_in_use("fal") == 0
    assert storage.acquire_slot("fal", 1, "w2", ttl=30) == index
    # Nor can it touch the slot's next holder.
    assert storage.extend_slot("fal", index, "w1", ttl=30) is False
    assert storage.release_slot("fal", index, "w1") is False
    assert storage.slots_in_use("fal") == 1


def test_slots_are_exclusive_across_threads(storage):
    taken: list[int] = []
    barrier = threading.Barrier(10)

    def take(i):
        barrier.wait()
        index = storage.acquire_slot("img", 3, f"h{i}", ttl=30)
        if index is not None:
            taken.append(index)

    run_concurrently(take, 10)
    assert sorted(taken) == [0, 1, 2]


# Everything ---------------------------------------------------------------------------
def test_flush_all(storage):
    storage.enqueue(b"dead")
    while storage.dead_letter_count() == 0:  # a worker that keeps dying: buried
        storage.claim(lease_seconds=0.001)
        time.sleep(0.005)
    storage.enqueue(b"q")
    storage.add_to_schedule(b"s", now())
    storage.put_data("k", b"v")
    storage.incr("c")
    storage.acquire_slot("x", 1, "h", 30)
    storage.flush_all()
    assert storage.queue_size() == 0
    assert storage.schedule_size() == 0
    assert storage.result_store_size() == 0
    assert storage.incr("c") == 1
    assert storage.slots_in_use("x") == 0
    assert storage.dead_letter_count() == 0


def test_storages_with_different_names_are_isolated(storage):
    other = type(storage).__new__(type(storage))
    other.__dict__.update(storage.__dict__)
    if hasattr(storage, "messages"):  # MongoStorage: the same database, other collections
        database = storage.messages.database
        other.__init__("other", client=storage.client, database=database.name)
    else:
        other.__init__("other", filename=storage.filename)
    storage.enqueue(b"mine")
    storage.put_data("k", b"mine")
    assert other.queue_size() == 0
    assert other.claim() is None
    assert other.peek_data("k") is EmptyData
    assert storage.claim().data == b"mine"


# Upgrades and indexes -----------------------------------------------------------------
OLD_SQLITE_DDL = [  # the tables as the first release created them
    "create table karasu_message (id integer primary key autoincrement, queue text not null,"
    " data blob not null, priority real not null default 0, lease_until real not null"
    " default 0, deliveries integer not null default 0, enqueued_at real not null)",
    "create table karasu_schedule (id integer primary key, queue text not null,"
    " data blob not null, timestamp real not null)",
    "create table karasu_dead_letter (id integer primary key, queue text not null,"
    " data blob not null, deliveries integer not null, died_at real not null,"
    " reason text not null)",
]


def test_sqlite_file_of_the_old_layout_is_upgraded_in_place(make_storage, backend, tmp_path):
    if backend != "sqlite":
        pytest.skip("only the SQLite storage has a table layout to upgrade")
    conn = sqlite3.connect(tmp_path / "queue.db")
    for sql in OLD_SQLITE_DDL:
        conn.execute(sql)
    conn.execute(
        "insert into karasu_message (queue, data, priority, lease_until, deliveries,"
        " enqueued_at) values ('conformance', x'6f6c64', 2, 0, 0, 0)"
    )
    conn.execute(
        "insert into karasu_schedule (queue, data, timestamp) values ('conformance', x'73', 0)"
    )
    conn.commit()
    conn.close()
    storage = make_storage(lease_seconds=30, max_deliveries=3)
    delivery = storage.claim()
    assert delivery.data == b"old" and delivery.token
    assert storage.ack(delivery.message_id, delivery.token) is True
    storage.add_to_schedule(b"new", now() - SECOND, priority=5)
    assert storage.promote_due(now()) == [b"s", b"new"]
    assert storage.dequeue() == b"new"
    bury(storage, b"poison", priority=3)
    assert storage.claim().data == b"s"
    assert storage.claim() is None
    assert storage.dead_letters()[0].priority == 3
    storage.enqueue(b"waiting", priority=4)
    schema, rows = _sqlite_contents(tmp_path / "queue.db")
    reopened = make_storage(lease_seconds=30, max_deliveries=3)
    # Opening an upgraded file again changes nothing: the same tables, columns and rows.
    assert _sqlite_contents(tmp_path / "queue.db") == (schema, rows)
    assert [letter.data for letter in reopened.dead_letters()] == [b"poison"]
    assert reopened.dead_letters()[0].priority == 3
    assert reopened.claim().data == b"waiting"


def _sqlite_contents(path) -> tuple[list, dict]:
    """Every table's definition and rows in a SQLite queue file, read on a connection of
    its own."""
    conn = sqlite3.connect(path)
    try:
        schema = conn.execute("select type, name, sql from sqlite_master order by name").fetchall()
        tables = [name for kind, name, _ in schema if kind == "table" and "sqlite" not in name]
        rows = {
            table: conn.execute(f"select * from {table} order by 1").fetchall() for table in tables
        }
    finally:
        conn.close()
    return schema, rows


def test_mongo_schedule_of_the_old_layout_is_adopted(storage, backend, caplog):
    if backend == "sqlite":
        pytest.skip("MongoStorage's collections")
    base = now()
    legacy = storage.legacy_schedule
    legacy.insert_many(
        [
            {"data": b"due", "ts": (base - SECOND).replace(tzinfo=UTC).timestamp(), "claim": None},
            {"data": b"later", "ts": time.time() + 60, "claim": None},
            {"data": b"half-moved", "ts": 0.0, "claim": None, "adopted_at": 1.0},
        ]
    )
    with caplog.at_level(logging.WARNING, logger="huey_tasks.storage.mongo"):
        assert storage.adopt_legacy_schedule() == 2
    assert "1 entries" in caplog.text
    assert storage.schedule_size() == 2
    assert sorted(storage.all_messages()) == [b"due", b"half-moved", b"later"]
    assert storage.promote_due(base) == [b"due"]
    assert storage.dequeue() == b"due"
    assert storage.adopt_legacy_schedule() == 0


def _plan_stages(plan) -> list[dict]:
    """Every stage of an explain plan, in any of the servers' plan formats."""
    stages = []
    if isinstance(plan, dict):
        if "stage" in plan:
            stages.append(plan)
        for value in plan.values():
            stages += _plan_stages(value)
    elif isinstance(plan, list):
        for value in plan:
            stages += _plan_stages(value)
    return stages


def test_claim_uses_its_index_without_an_in_memory_sort(storage, backend):
    if backend != "mongodb":
        pytest.skip("needs a real server's explain (TEST_MONGODB_URI); mongomock has none")
    storage.enqueue_many([str(i).encode() for i in range(200)])
    storage.enqueue_many([b"urgent"] * 20, priority=5)
    for _ in range(10):
        storage.claim()
    storage.add_to_schedule(b"later", now() + 60 * SECOND)
    now_ts = time.time()
    explained = storage.messages.database.command(
        "explain",
        {
            "findAndModify": storage.messages.name,
            "query": storage.claim_query(now_ts),
            "sort": dict(mongo_module.CLAIM_SORT),
            "update": {"$set": {"lease_until": now_ts + 30}, "$inc": {"deliveries": 1}},
        },
        verbosity="queryPlanner",
    )
    provider = explained.get("cxp", {}).get("provider")
    if "queryPlanner" not in explained and provider == "mongoeco":
        pytest.skip(
            "mongoeco emulator bug: its explain has no queryPlanner/winningPlan (it has no"
            " query planner; it scans and sorts in Python), so there is no plan to check"
        )
    stages = _plan_stages(explained["queryPlanner"]["winningPlan"])
    names = [stage["stage"] for stage in stages]
    assert "SORT" not in names, names
    scans = [stage for stage in stages if stage["stage"] == "IXSCAN"]
    assert [scan["indexName"] for scan in scans] == [mongo_module.CLAIM_INDEX], stages
    index = storage.messages.index_information()[mongo_module.CLAIM_INDEX]
    assert index["key"] == mongo_module.CLAIM_KEYS
    # The lease check runs on the index's keys (bounds or an IXSCAN filter): leased
    # messages are skipped there, not fetched and then filtered out.
    fetch_filters = [str(stage.get("filter", "")) for stage in stages if stage["stage"] == "FETCH"]
    assert not any("lease_until" in text for text in fetch_filters), stages


@pytest.mark.parametrize(
    "options",
    [
        {"lease_seconds": float("nan")},
        {"lease_seconds": float("inf")},
        {"lease_seconds": 0},
        {"lease_seconds": -1.5},
        {"lease_seconds": "nan"},
        {"max_deliveries": 0},
        {"max_deliveries": 2.5},
        {"max_deliveries": float("inf")},
    ],
)
def test_configure_leases_refuses_what_a_heartbeat_cannot_sleep_on(storage, make_storage, options):
    # nan or inf would reach time.sleep() in the heartbeat and end its thread.
    with pytest.raises(ValueError, match=next(iter(options))):
        storage.configure_leases(**options)
    assert (storage.lease_seconds, storage.max_deliveries) == (30.0, 3)  # nothing changed
    with pytest.raises(ValueError):
        make_storage(**options)


class _RecordingCollection:
    """A MongoDB collection that records the find_one_and_update commands sent to it."""

    def __init__(self, collection):
        self._collection = collection
        self.commands: list[dict] = []

    def __getattr__(self, name):
        return getattr(self._collection, name)

    def find_one_and_update(self, filter, update, **kwargs):
        self.commands.append({"filter": filter, **kwargs})
        return self._collection.find_one_and_update(filter, update, **kwargs)


def _index_serves(keys: list, sort: list, filter: dict) -> bool:
    """MongoDB's rule, independent of any server or emulator: an index returns a query's
    documents in its sort order, with no in-memory SORT stage, when the sort's keys are the
    index's first keys, all in the index's directions or all reversed; and it checks the
    filter on its own keys (no document fetched to be filtered out) when every field the
    filter names is one of the index's keys."""
    keys = [(field, int(direction)) for field, direction in keys]
    sort = [(field, int(direction)) for field, direction in sort]
    prefix = keys[: len(sort)]
    in_order = prefix in (sort, [(field, -direction) for field, direction in sort])
    return in_order and set(filter) <= {field for field, _ in keys}


def test_claim_is_served_by_an_index_in_claim_order(storage, backend):
    """Claiming is one indexed read on every storage: no scan and no sort of the queue."""
    storage.enqueue_many([str(i).encode() for i in range(50)])
    storage.enqueue_many([b"urgent"] * 5, priority=5)
    if backend == "sqlite":
        statements: list[str] = []
        storage.conn.set_trace_callback(statements.append)
        try:
            assert storage.claim().data == b"urgent"
        finally:
            storage.conn.set_trace_callback(None)
        [claim] = [sql for sql in statements if "order by" in sql]
        conn = sqlite3.connect(storage.filename)
        try:
            plan = [row[3] for row in conn.execute(f"explain query plan {claim}")]
        finally:
            conn.close()
        assert not any("TEMP B-TREE" in step for step in plan), plan
        assert any("USING INDEX karasu_message_next" in step for step in plan), plan
        return
    messages = storage.messages
    storage.messages = recording = _RecordingCollection(messages)
    try:
        assert storage.claim().data == b"urgent"
    finally:
        storage.messages = messages
    [command] = recording.commands
    indexes = {
        name: [(field, direction) for field, direction in spec["key"]]
        for name, spec in messages.index_information().items()
    }
    serving = [
        name
        for name, keys in indexes.items()
        if _index_serves(keys, command["sort"], command["filter"])
    ]
    assert serving == [mongo_module.CLAIM_INDEX], (command, indexes)
