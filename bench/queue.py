"""Queue storage throughput, side by side in one run.

Enqueue rate and dequeue+ack rate of each storage, printed as messages/s and as a ratio to
Huey's stock SqliteStorage (at-most-once: its dequeue deletes). Karasu's leasing SQLite
queue claims, then acks, so it does two writes per message; the target is >= 0.5x stock.
It runs WAL with synchronous=NORMAL (commits survive a killed process; only an OS crash may
lose the last few), so the stock storage is also measured at that setting, like for like.
RedisStorage is an anchor when a Redis answers on 127.0.0.1:6379; MongoStorage runs on a
real server when TEST_MONGODB_URI is set.

    python bench/queue.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder would come first on sys.path and this file would shadow the
# standard library's `queue`; the project root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from huey.storage import RedisStorage, SqliteStorage  # noqa: E402

from huey_tasks.storage import LeasingSqliteStorage, MongoStorage  # noqa: E402

PAYLOAD = b"x" * 300  # about the size of a pickled generate_image(job_id) message


def measure(storage, messages: int) -> tuple[float, float]:
    storage.flush_all()
    start = time.perf_counter()
    for _ in range(messages):
        storage.enqueue(PAYLOAD)
    enqueue_rate = messages / (time.perf_counter() - start)

    start = time.perf_counter()
    taken = 0
    if hasattr(storage, "claim"):
        while (delivery := storage.claim()) is not None:
            storage.ack(delivery.message_id, delivery.token)
            taken += 1
    else:
        while storage.dequeue() is not None:
            taken += 1
    dequeue_rate = taken / (time.perf_counter() - start)
    assert taken == messages, (taken, messages)
    storage.flush_all()
    return enqueue_rate, dequeue_rate


def stock_like_leasing(workdir: Path) -> SqliteStorage:
    """Stock storage at the durability the leasing one runs with, for a like-for-like row."""
    storage = SqliteStorage("bench", filename=str(workdir / "stock-normal.db"))
    storage.conn.execute("pragma synchronous=NORMAL")
    return storage


def candidates(workdir: Path):
    yield (
        "huey SqliteStorage (stock, at-most-once)",
        lambda: SqliteStorage("bench", filename=str(workdir / "stock.db")),
    )
    yield "huey SqliteStorage, synchronous=NORMAL", lambda: stock_like_leasing(workdir)
    yield (
        "karasu LeasingSqliteStorage (NORMAL)",
        lambda: LeasingSqliteStorage("bench", filename=str(workdir / "leasing.db")),
    )
    try:
        redis = RedisStorage("bench", host="127.0.0.1", port=6379)
        redis.conn.ping()
        yield "huey RedisStorage (stock)", lambda: redis
    except Exception as exc:  # noqa: BLE001 - an anchor only
        print(f"(RedisStorage skipped: {exc.__class__.__name__})")
    if os.environ.get("TEST_MONGODB_URI"):
        yield (
            "karasu MongoStorage (server)",
            lambda: MongoStorage(
                "bench", url=os.environ["TEST_MONGODB_URI"], database="karasu_bench"
            ),
        )
    else:
        print("(MongoStorage skipped: TEST_MONGODB_URI is not set; mongomock is no benchmark)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for label, factory in candidates(Path(tmp)):
            rows.append((label, *measure(factory(), args.messages)))
    base_enqueue, base_dequeue = rows[0][1], rows[0][2]
    print(f"\n{args.messages} messages of {len(PAYLOAD)} bytes, one thread\n")
    print(f"{'storage':42} {'enqueue/s':>10} {'ratio':>6} {'dequeue+ack/s':>14} {'ratio':>6}")
    for label, enqueue_rate, dequeue_rate in rows:
        print(
            f"{label:42} {enqueue_rate:10.0f} {enqueue_rate / base_enqueue:5.2f}x"
            f" {dequeue_rate:14.0f} {dequeue_rate / base_dequeue:5.2f}x"
        )


if __name__ == "__main__":
    main()
