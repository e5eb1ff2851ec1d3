"""Read the demo image provider's CALL_LOG: which job was submitted, by whom, and when.

The demo model works like fal's queue (see generation/providers/demo.py): a submission
is paid for, and any process may wait for its result. The log has one line per
submission, per resumed wait, and per delivered outcome::

    start <key> <pid> <ts> [<call id>]
    resume <key> <pid> <ts> <call id>
    end <key> <pid> <ts> <ok|transient|permanent|error> [<call id>]

``key`` names the job (a hash of its prompt), ``ts`` is ``time.time()``, the call id is
the provider's request id. Starts and ends pair by call id (the first end closes a call;
a resumed call may end in another process); lines without one pair first-in first-out
per (key, pid). A call whose end never came (its process was killed and nobody resumed
it) is open until +inf, or until its process's death time when the caller passes
``deaths`` ({pid: time.time() at or after the death}).

Every ``start`` is a paid submission unless the provider failed it (``transient``: fal
bills no failed output; ``permanent``: refused by content policy); one cut off by a
kill is paid, since the provider finishes it all the same.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path

OUTCOMES = frozenset({"ok", "transient", "permanent", "error"})
UNPAID = frozenset({"transient", "permanent"})


@dataclass(frozen=True)
class Call:
    key: str
    pid: int  # the process that submitted it
    start: float
    end: float = math.inf  # +inf while no end line was written
    outcome: str | None = None  # None while open
    call_id: str = ""
    resumes: tuple[tuple[int, float], ...] = ()  # (pid, ts) of each wait resumed, in order

    @property
    def resumed_by(self) -> tuple[int, ...]:
        """The processes that waited for it again, in order."""
        return tuple(pid for pid, _ in self.resumes)

    @property
    def open(self) -> bool:
        return self.outcome is None

    @property
    def paid(self) -> bool:
        return self.outcome not in UNPAID

    def overlaps(self, other: Call) -> bool:
        # Strict: one call ending exactly when the next starts is not an overlap.
        return self.start < other.end and other.start < self.end


def read_calls(path: str | PathLike[str], deaths: Mapping[int, float] | None = None) -> list[Call]:
    """Every submission in the log, in start order. Malformed lines raise ValueError."""
    deaths = deaths or {}
    starts: dict[str, tuple[str, int, float]] = {}  # open, by call id
    ended: dict[str, str] = {}  # closed call id -> its key (a later end is a re-delivery)
    resumes: dict[str, list[tuple[int, float]]] = defaultdict(list)
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
                    if call_id in starts or call_id in ended:
                        raise ValueError("call id started twice")
                    starts[call_id] = (key, int(pid), float(ts))
                else:
                    unnamed[key, int(pid)].append(float(ts))
            elif kind == "resume" and len(rest) == 1:
                call_id = rest[0]
                known = starts[call_id][0] if call_id in starts else ended[call_id]
                if known != key:
                    raise ValueError("resume does not match its start")
                resumes[call_id].append((int(pid), float(ts)))
            elif kind == "end" and len(rest) in (1, 2) and rest[0] in OUTCOMES:
                outcome, call_id = rest[0], (rest[1] if len(rest) == 2 else "")
                if call_id and call_id in ended:
                    if ended[call_id] != key:
                        raise ValueError("end does not match its start")
                    continue  # its result delivered again (a retried filing): one call
                if call_id:
                    start_key, start_pid, started = starts.pop(call_id)
                    if start_key != key or (
                        start_pid != int(pid) and int(pid) not in {p for p, _ in resumes[call_id]}
                    ):
                        raise ValueError("end does not match its start")
                    ended[call_id] = key
                    submitter = start_pid
                else:
                    started, submitter = unnamed[key, int(pid)].popleft(), int(pid)
                calls.append(Call(key, submitter, started, float(ts), outcome, call_id))
            else:
                raise ValueError("not a start, resume or end line")
        except (ValueError, KeyError, IndexError) as error:
            raise ValueError(f"{path}:{number}: bad call log line {line!r} ({error})") from None
    still_open = [
        (key, pid, started, call_id) for call_id, (key, pid, started) in starts.items()
    ] + [(key, pid, started, "") for (key, pid), times in unnamed.items() for started in times]
    for key, pid, started, call_id in still_open:
        # Open until its last waiter died (a resumed call is waited for by its resumer).
        waiters = [pid, *(p for p, _ in resumes.get(call_id, ()))]
        end = deaths.get(waiters[-1], math.inf)
        calls.append(Call(key, pid, started, end, None, call_id))
    # Every process that waited again, also after the first end (a filing retried later).
    calls = [
        replace(call, resumes=tuple(resumes[call.call_id])) if call.call_id in resumes else call
        for call in calls
    ]
    return sorted(calls, key=lambda call: (call.start, call.end))


def calls_per_key(path: str | PathLike[str]) -> Counter[str]:
    """How many submissions each key (job) got, finished or not, paid or not."""
    return Counter(call.key for call in read_calls(path))


def paid_submissions(path: str | PathLike[str]) -> Counter[str]:
    """Paid submissions per key: every start but those the provider failed or refused,
    including calls cut off by a kill (the provider finishes and bills them)."""
    return Counter(call.key for call in read_calls(path) if call.paid)


def calls_paid_twice(path: str | PathLike[str]) -> int:
    """Paid submissions beyond one per key: images paid for again."""
    return sum(count - 1 for count in paid_submissions(path).values())


def resumed_calls(path: str | PathLike[str]) -> list[Call]:
    """Submissions some process waited for again (after a retry, a takeover, a restart)."""
    return [call for call in read_calls(path) if call.resumed_by]


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
    return peak_in_flight(read_calls(path, deaths))


def peak_in_flight(calls: list[Call]) -> int:
    """The most of ``calls`` in flight at once."""
    # At equal times ends (-1) sort before starts (+1), matching Call.overlaps.
    events = sorted(event for call in calls for event in ((call.start, 1), (call.end, -1)))
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
