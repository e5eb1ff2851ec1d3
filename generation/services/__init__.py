"""The pipeline's state changes. Every transition is a conditional UPDATE, so that a
redelivered task or two workers racing change nothing twice. Request counters move in the
same transaction as the job they count, with F() increments, so no update is lost.

The modules follow the concerns: ``requests`` holds a request's life, ``expansion`` its
LLM calls, ``prompts`` what a streaming call writes as jobs, ``jobs`` a job queued, claimed
and finished once, ``provider_calls`` a job's paid call, stored and resumed, and
``recovery`` what maintenance repairs. ``common`` holds what they share. Callers use
``services.<name>``.
"""

from generation.services.common import (  # noqa: F401
    CLAIM_LEASES,
    COUNTERS,
    EXPANDING_STATES,
    NO_CLAIM,
    NO_PROVIDER_CALL,
    SEED_RANGE,
    Call,
    Job,
    Req,
    close_lost_calls,
    lock_request,
    open_calls,
    unclaimed,
)
from generation.services.expansion import (  # noqa: F401
    CallBusy,
    call_attempts,
    claim_call,
    expand_request,
    extend_call_claims,
    fail_call,
    give_up_lost_calls,
    next_calls,
    pending_jobs_to_generate,
    plan_expansion,
    release_call,
    requeue_timed_out_call,
    retry_call_later,
    run_call,
    take_next_calls,
    untake_calls,
)
from generation.services.jobs import (  # noqa: F401
    JobBusy,
    call_in_flight,
    claim_held,
    claim_job,
    defer_job,
    extend_job_claims,
    finish_abandoned_job,
    finish_job,
    finish_own_job,
    finish_unclaimed_job,
    job_indexes,
    mark_queued,
    mark_retrying,
    note_job_waiting,
    regenerate_job,
    release_job,
    reopen_job,
    request_cancelled,
    reset_failed_jobs,
    retry_delay,
    runnable_job,
    store,
    unmark_queued,
    update_prompt,
)
from generation.services.prompts import WRITE_EVERY, WRITE_PROMPTS  # noqa: F401
from generation.services.provider_calls import (  # noqa: F401
    SOURCE_DELETED,
    SOURCE_MAX_BYTES,
    SOURCE_MAX_PIXELS,
    SOURCE_RENDITION,
    SOURCE_TYPES,
    ClaimLost,
    claimed_call,
    clear_call,
    generate,
    give_up_call,
    load_source_image,
    record_call,
    source_description,
    source_image_deleted,
)
from generation.services.recovery import (  # noqa: F401
    RECOVERABLE,
    ended_requests_with_lost_calls,
    lost_expansions,
    lost_jobs,
    pause_request,
    pending_job_ids,
    recover_jobs,
    restart_expansion,
    stalled_requests,
)
from generation.services.requests import (  # noqa: F401
    add_llm_usage,
    cancel_queued_expansion,
    cancel_request,
    fail_request,
    note_request_error,
    reopen_request,
    settle_finished_requests,
    settle_request,
    start_request,
)
