"""One conformance suite for every Karasu queue storage (SQLite, mongomock, real MongoDB)."""

import datetime
import threading
import time

from huey.constants import EmptyData

UTC = datetime.UTC


def now():
    return datetime.datetime.now(UTC).replace(tzinfo=None)


def run_concurrently(target, count: int) -> None:
    """Run target(i) for i in range(count) in as many threads, and wait for them all."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


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
    # Leased: not deliverable, not counted as queued, counted as running.
    assert storage.claim() is None
    assert storage.queue_size() == 0
    assert storage.leased_count() == 1
    assert storage.ack(delivery.message_id) is True
    assert storage.leased_count() == 0
    assert storage.ack(delivery.message_id) is False


def test_expired_lease_is_redelivered_with_count_raised(storage):
    storage.enqueue(b"job")
    first = storage.claim(lease_seconds=0.05)
    time.sleep(0.1)
    second = storage.claim()
    assert second is not None
    assert second.message_id == first.message_id
    assert second.deliveries == 2


def test_heartbeat_extends_lease(storage):
    storage.enqueue(b"job")
    delivery = storage.claim(lease_seconds=0.2)
    assert storage.extend_leases([delivery.message_id], lease_seconds=30) == 1
    time.sleep(0.3)
    assert storage.claim() is None
    assert storage.extend_leases([]) == 0


def test_release_hands_back_without_counting(storage):
    storage.enqueue(b"job")
    delivery = storage.claim()
    assert storage.release(delivery.message_id) is True
    again = storage.claim()
    assert again.message_id == delivery.message_id
    assert again.deliveries == 1


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


def test_purge_dead_letters(storage):
    for data in (b"p1", b"p2", b"p3"):
        storage.enqueue(data)
    for _ in range(3):
        for _ in range(3):
            storage.claim(lease_seconds=0.01)
        time.sleep(0.02)
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
            storage.ack(delivery.message_id)
            with lock:
                seen.append(delivery.data)

    run_concurrently(consume, 8)
    assert sorted(seen) == sorted(str(i).encode() for i in range(total))


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
    assert storage.enqueued_items() == [b"due"]


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


def test_put_if_empty_with_ttl(storage):
    assert storage.put_if_empty("lock", b"1", ttl=0.1) is True
    assert storage.put_if_empty("lock", b"2", ttl=0.1) is False
    assert storage.peek_data("lock") == b"1"
    time.sleep(0.15)
    assert storage.has_data_for_key("lock") is False  # expired keys read as absent
    assert storage.put_if_empty("lock", b"3") is True
    assert storage.put_if_empty("lock", b"4", ttl=0.01) is False  # no ttl: never expires


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
    assert storage.acquire_slot("fal", 2, "w2", ttl=0.1) == 1
    assert storage.acquire_slot("fal", 2, "w3", ttl=30) is None
    assert storage.slots_in_use("fal") == 2
    assert storage.release_slot("fal", 0, "someone-else") is False
    assert storage.release_slot("fal", 0, "w1") is True
    assert storage.acquire_slot("fal", 2, "w3", ttl=30) == 0
    time.sleep(0.15)  # w2 "crashed": its slot frees itself
    assert storage.slots_in_use("fal") == 1
    assert storage.extend_slot("fal", 1, "w2", ttl=30) is True  # still its holder
    assert storage.slots_in_use("fal") == 2


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
    storage.enqueue(b"q")
    storage.add_to_schedule(b"s", now())
    storage.put_data("k", b"v")
    storage.incr("c")
    storage.acquire_slot("x", 1, "h", 30)
    storage.enqueue(b"dead")
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
