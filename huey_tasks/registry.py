"""What the job monitor is told about the tasks and data it shows.

The queue and its monitor know nothing of what the tasks are for. An application that
owns tasks registers here, from its ``AppConfig.ready``: how a task's runs link to its own
rows (for the ledger), how to retry, revoke or requeue one safely, whether doing so may
spend money, and extra sections for the monitor's pages. Everything not registered is
shown and handled as a plain Huey task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# (message, ok): what an action did, as the monitor shows it after a POST.
Outcome = tuple[str, bool]


@dataclass(frozen=True)
class TaskKind:
    """Hooks for one task, by its short name (``generate_image``)."""

    name: str
    #: Given a batch of tasks, returns the ledger's link columns for each of them, as
    #: ``{task_id: {column: value}}``.
    links: Callable[[list[Any]], dict[str, dict]] | None = None
    #: Given a run, returns what it is for as the monitor's list shows it, a pair of a label
    #: and an admin URL, or None when it has no subject.
    subject: Callable[[Any], tuple[str, str] | None] | None = None
    #: True when retrying or requeueing a run may call a paid provider.
    spends_money: bool = False
    #: Retries a finished run and returns the outcome. When it is None, the monitor
    #: enqueues the task again with its stored arguments.
    retry: Callable[[Any], Outcome] | None = None
    #: Given a queued run, returns why it cannot be revoked now (because it is already
    #: under way), or an empty string when it can.
    revoke_refusal: Callable[[Any], str] | None = None
    #: Called after Huey's revoke flag is set, to settle what the run was for. It returns
    #: an empty string, or a refusal when the run started meanwhile, in which case the
    #: caller lifts the flag again.
    revoked: Callable[[Any], str] | None = None
    #: Called with a dead letter's task before its message goes back on the queue, to
    #: reopen what it failed. It returns an empty string, or a refusal, in which case the
    #: letter stays where it is.
    requeue: Callable[[Any], str] | None = None
    #: Given a user who may change task runs, says whether they may also retry or revoke
    #: this task's runs. Those actions change what a run is for (revoking an image's run
    #: cancels its job), so an application may ask for more. When it is None, anyone who
    #: may change task runs may act.
    may_act: Callable[[Any], bool] | None = None

    def allows_actions(self, user) -> bool:
        return self.may_act is None or self.may_act(user)


@dataclass(frozen=True)
class MonitorSection:
    """A part of a monitor page, rendered from ``template`` with ``context()``, shown to
    users for whom ``shown_to(user)`` is true."""

    template: str
    context: Callable[..., dict] = field(default=lambda *args: {})
    shown_to: Callable[[Any], bool] = field(default=lambda user: True)
    order: int = 100


_kinds: dict[str, TaskKind] = {}
_live_sections: list[MonitorSection] = []
_run_sections: list[MonitorSection] = []
_spending_permission: list[Callable[[Any], bool]] = []
_content_permission: list[Callable[[Any], bool]] = []
_urls: list[Any] = []


def register_task(kind: TaskKind) -> None:
    _kinds[kind.name] = kind


def task_kind(short_name: str) -> TaskKind:
    return _kinds.get(short_name) or TaskKind(short_name)


def task_kinds() -> Iterable[TaskKind]:
    return _kinds.values()


def register_live_section(section: MonitorSection) -> None:
    """A section of the monitor's self-refreshing part (and of its first render)."""
    _live_sections.append(section)
    _live_sections.sort(key=lambda item: item.order)


def live_sections(user) -> list[MonitorSection]:
    return [section for section in _live_sections if section.shown_to(user)]


def register_run_section(section: MonitorSection) -> None:
    """A section of a run's detail page; its ``context`` is called with the run."""
    _run_sections.append(section)
    _run_sections.sort(key=lambda item: item.order)


def run_sections(user) -> list[MonitorSection]:
    return [section for section in _run_sections if section.shown_to(user)]


def register_spending_permission(check: Callable[[Any], bool]) -> None:
    """Who may take actions that spend money, besides changing task runs."""
    _spending_permission.append(check)


def may_spend(user) -> bool:
    return all(check(user) for check in _spending_permission)


def register_content_permission(check: Callable[[Any], bool]) -> None:
    """Who may see what the tasks are about, besides viewing task runs: the rows a run links
    to (their names in the raw task browser, the subject in the monitor's list). The
    applications' own sections say who sees them with ``MonitorSection.shown_to``."""
    _content_permission.append(check)


def may_see_content(user) -> bool:
    return all(check(user) for check in _content_permission)


def register_urls(*patterns) -> None:
    """More views under the monitor's URL namespace (``job_monitor:``)."""
    _urls.extend(patterns)


def urls() -> list:
    return list(_urls)
