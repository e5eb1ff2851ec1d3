"""Read the demo image provider's CALL_LOG: which job was called, by whom, and when.

The log (see generation/providers/demo.py) has one line per call start and one per end::

    start <key> <pid> <ts> [<call id>]
    end <key> <pid> <ts> <ok|transient|permanent|error> [<call id>]

``key`` names the job (a hash of its prompt), ``ts`` is ``time.time()``. Starts and ends
pair by call id; lines without one pair first-in first-out per (key, pid). A call whose end
never came (its process was killed) is open until +inf, or until its process's death time
when the caller passes ``deaths`` ({pid: time.time() at or after the death}).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

OUTCOMES = frozenset({"ok", "transient", "permanent", "error"})


@dataclass(frozen=True)
class Call:
    key: str
    pid: int
    start: float
    end: float = math.inf  # +inf while no end line was written
    outcome: str | None = None  # None while open
    call_id: str = ""

    @property
    def open(self) -> bool:
        return self.outcome is None

    def overlaps(self, other: Call) -> bool:
        # Strict: one call ending exactly when the next starts is not an overlap.
        return self.start < other.end and other.start < self.end


def read_calls(path: str | PathLike[str], deaths: Mapping[int, float] | None = None) -> list[Call]:
    """Every call in the log, in start order. Malformed lines raise ValueError."""
    deaths = deaths or {}
    starts: dict[str, tuple[str, int, float, str]] = {}  # by call id
    unnamed: dict[tuple[str, int], deque[float]] = defaultdict(deque)
    calls: list[Call] = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        fields = line.split()
        try:
            kind, key, pid, ts, *rest = fields
            if kind == "start" and len(rest) <= 1:
                call_id = rest[0] if rest else ""
                if call_id:
                    if call_id in starts:
                        raise ValueError("call id started twice")
                    starts[call_id] = (key, int(pid), float(ts), call_id)
                else:
                    unnamed[key, int(pid)].append(float(ts))
            elif kind == "end" and len(rest) in (1, 2) and rest[0] in OUTCOMES:
                outcome, call_id = rest[0], (rest[1] if len(rest) == 2 else "")
                if call_id:
                    start_key, start_pid, started, _ = starts.pop(call_id)
                    if (start_key, start_pid) != (key, int(pid)):
                        raise ValueError("end does not match its start")
                else:
                    started = unnamed[key, int(pid)].popleft()
                calls.append(Call(key, int(pid), started, float(ts), outcome, call_id))
            else:
                raise ValueError("not a start or end line")
        except (ValueError, KeyError, IndexError) as error:
            raise ValueError(f"{path}:{number}: bad call log line {line!r} ({error})") from None
    still_open = list(starts.values()) + [
        (key, pid, started, "") for (key, pid), times in unnamed.items() for started in times
    ]
    for key, pid, started, call_id in still_open:
        calls.append(Call(key, pid, started, deaths.get(pid, math.inf), None, call_id))
    return sorted(calls, key=lambda call: (call.start, call.end))


def calls_per_key(path: str | PathLike[str]) -> Counter[str]:
    """How many calls each key (job) got, finished or not."""
    return Counter(call.key for call in read_calls(path))


def calls_paid_twice(path: str | PathLike[str]) -> int:
    """Successful calls beyond one per key: images paid for again (none filed twice)."""
    ok = Counter(call.key for call in read_calls(path) if call.outcome == "ok")
    return sum(count - 1 for count in ok.values())


def overlapping_calls(
    path: str | PathLike[str], deaths: Mapping[int, float] | None = None
) -> list[tuple[str, Call, Call]]:
    """Pairs of calls for the same key that were in flight at the same time."""
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in read_calls(path, deaths):
        by_key[call.key].append(call)
    found = []
    for key, calls in by_key.items():
        for i, first in enumerate(calls):
            for second in calls[i + 1 :]:
                if first.overlaps(second):
                    found.append((key, first, second))
    return found


def max_in_flight(path: str | PathLike[str], deaths: Mapping[int, float] | None = None) -> int:
    """The most calls in flight at once, across all keys and processes."""
    # At equal times ends (-1) sort before starts (+1), matching Call.overlaps.
    events = sorted(
        event for call in read_calls(path, deaths) for event in ((call.start, 1), (call.end, -1))
    )
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
