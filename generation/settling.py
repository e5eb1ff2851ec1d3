"""What happens to a job or a request whose message will never finish.

The queue signals a message that it buries in the dead letters, and a task that ran past
its deadline. The handlers below settle at once what such a message was for, so that its
job or request does not wait for maintenance to notice. Importing ``generation.tasks``
connects them.
"""

from __future__ import annotations

from huey.contrib.djhuey import HUEY

from generation import reconcile, services
from generation.models import GenerationJob
from huey_tasks import ledger
from huey_tasks.queue import SIGNAL_DEAD_LETTERED, SIGNAL_DEADLINE


def _task_target(task) -> tuple[str, int | None]:
    name = task.name.rsplit(".", 1)[-1]
    target = task.args[0] if task.args and isinstance(task.args[0], int) else None
    return name, target


@HUEY.signal(SIGNAL_DEAD_LETTERED)
def settle_dead_letter(signal, task, letter) -> None:
    name, target = _task_target(task)
    if target is not None:
        with ledger.worker_connection():
            reconcile.settle_dead_letter(name, target, letter, HUEY.storage.lease_seconds)


@HUEY.signal(SIGNAL_DEADLINE)
def settle_deadline(signal, task, deadline) -> None:
    # The expansion's tasks live in generation.tasks, which imports this module.
    from generation.tasks import LLM_CALL_ATTEMPTS, enqueue_calls

    name, target = _task_target(task)
    reason = f"timed out: no result within {deadline:.0f} s"
    if target is None:
        return
    with ledger.worker_connection():
        if name == "generate_image":
            # Only the stuck holder's own claim is failed, so its late result is fenced out.
            # A claim that another worker took over meanwhile is left alone.
            token = getattr(task, "job_claim", None)
            services.finish_own_job(target, GenerationJob.Status.FAILED, token, error=reason)
        elif name == "expand_prompt":
            services.fail_request(target, reason, services.EXPANDING_STATES)
        elif name == "expand_call":
            # Only this call is affected. It gets another attempt while it has attempts
            # left (its late answer is counted but writes nothing); otherwise the expansion
            # goes on without it.
            enqueue_calls(
                task.args[1], services.requeue_timed_out_call(target, reason, LLM_CALL_ATTEMPTS)
            )
