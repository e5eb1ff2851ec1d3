"""Cost, usage and budgets: exact Decimal estimates and spend, budget refusals (admin and
CLI), and where the figures are shown (form, listing, request page, monitor, CLI)."""

import datetime
import subprocess
import sys
from decimal import Decimal

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from huey.contrib.djhuey import HUEY
from wagtail.images import get_image_model

from generation import costs, services
from generation.forms import CountWithEstimate
from generation.models import GenerationJob, GenerationRequest, Spend
from generation.providers import reset_cache
from tests.support.admin import NS
from tests.support.consumers import consumer_env, wait_for
from tests.support.factories import make_request, write_prompts
from tests.support.forms import request_form_data

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("collections")]
Req = GenerationRequest.Status
Job = GenerationJob.Status
PRICE = "0.0125"  # the demo model's price in these tests (KARASU_DEMO_PRICE)


@pytest.fixture
def priced(settings):
    """The demo image model at $0.0125 per image, no latency; budgets unset."""
    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "PRICE": PRICE,
        "LATENCY": 0.0,
        "FAILURE_RATE": 0.0,
        "REJECT_RATE": 0.0,
    }
    settings.KARASU["MAX_REQUEST_COST"] = None
    settings.KARASU["MAX_MONTHLY_COST"] = None
    reset_cache()
    return settings.KARASU


form_data = request_form_data


# Prices and estimates -------------------------------------------------------------------
def test_prices_are_exact_decimals_from_settings(priced):
    assert costs.price_per_image("demo") == Decimal("0.0125")
    assert costs.price_per_image("flux-schnell") == Decimal("0.003")
    assert costs.price_per_image("nano-banana") == Decimal("0.039")
    assert costs.estimate(7, "demo") == Decimal("0.0875")
    assert costs.estimate(500, "flux-schnell") == Decimal("1.5")
    assert costs.estimate(3, "flux-ultra") == Decimal("0.18")  # not 0.18000000000000002
    assert costs.unit_price(Decimal("0.0875"), 7) == Decimal("0.0125")
    assert costs.usd(Decimal("0.0875")) == "$0.0875"
    assert costs.usd(Decimal("1.5")) == "$1.50"
    assert costs.usd(Decimal("1234.5")) == "$1,234.50"
    assert costs.usd(Decimal("0")) == "$0.00"
    assert all(isinstance(price, Decimal) for price in costs.prices().values())


@pytest.mark.parametrize("value", [0.1, "0.00001", "-1", "free", "NaN", "Infinity"])
def test_bad_prices_are_refused(value):
    with pytest.raises(ImproperlyConfigured):
        costs.parse_usd(value, "PRICE")


def test_the_estimate_is_set_on_every_save_and_fixed_once_prompts_exist(priced):
    # Saved in code, not by a form: the pre_save receiver sets the estimate.
    request = make_request(with_jobs=False, count=7)
    assert request.cost_estimate == Decimal("0.0875")
    request.refresh_from_db()
    assert request.cost_estimate == Decimal("0.0875")

    request.count = 9
    request.save()
    request.refresh_from_db()
    assert request.cost_estimate == Decimal("0.1125")

    # Once the prompts are written, a new price does not reprice the request.
    write_prompts(request)
    request.refresh_from_db()
    priced["IMAGE_MODELS"]["demo"]["PRICE"] = "0.5"
    request.theme = "Crows at dusk"
    request.save()
    request.refresh_from_db()
    assert request.cost_estimate == Decimal("0.1125")


# Spend ------------------------------------------------------------------------------------
def test_spend_is_exact_as_jobs_finish_at_the_price_the_request_was_saved_with(priced):
    priced["IMAGE_MODELS"]["demo"]["PRICE"] = "0.0333"
    request = make_request(with_jobs=False, count=3)
    jobs = write_prompts(request)
    priced["IMAGE_MODELS"]["demo"]["PRICE"] = "9"  # changed later: not used for this request

    assert services.finish_job(jobs[0].pk, Job.SUCCEEDED)
    assert not services.finish_job(jobs[0].pk, Job.SUCCEEDED)  # a second delivery: once
    assert services.finish_job(jobs[1].pk, Job.FAILED, error="rejected")
    request.refresh_from_db()
    assert (request.jobs_succeeded, request.cost_spent) == (1, Decimal("0.0333"))

    # Retrying the failed one pays for one more image; the succeeded one is paid once.
    assert services.reset_failed_jobs(request) == [jobs[1].pk]
    for job in jobs:
        services.finish_job(job.pk, Job.SUCCEEDED)
    request.refresh_from_db()
    assert request.status == Req.COMPLETED
    assert (request.jobs_succeeded, request.cost_spent) == (3, Decimal("0.0999"))
    assert request.cost_spent == request.cost_estimate
    # The month's books agree: one booking per paid image.
    assert sum(spend.amount for spend in Spend.objects.filter(request=request)) == Decimal("0.0999")
    assert costs.spend_summary()["today"] == Decimal("0.0999")


def test_spend_through_a_real_run_and_a_regeneration(priced, editor, thread_consumer):
    response = editor.post(reverse(f"{NS}:add"), form_data(count=6))
    assert response.status_code == 302
    request = GenerationRequest.objects.get()
    assert request.cost_estimate == Decimal("0.0750")
    editor.post(reverse(f"{NS}:action", args=[request.pk, "generate"]))

    def finished():
        request.refresh_from_db()
        return request.is_terminal

    wait_for(finished, 60, message="the request to finish")
    assert request.status == Req.COMPLETED
    assert request.cost_spent == Decimal("0.0750")  # 6 × 0.0125, exactly

    # A regenerated image is a new, paid image; the old one stays in the library, paid too.
    job = request.jobs.get(index=2)
    editor.post(reverse(f"{NS}:job_generate", args=[job.pk]))
    wait_for(
        lambda: (
            GenerationJob.objects.get(pk=job.pk).image_id not in (None, job.image_id) and finished()
        ),
        60,
        message="the regenerated image",
    )
    assert request.jobs_succeeded == 6
    assert get_image_model().objects.filter(generation_request_id=request.pk).count() == 7
    assert request.cost_spent == Decimal("0.0875")

    listing = editor.get(reverse(f"{NS}:list"))
    assert "$0.0875 of $0.075" in listing.content.decode()


def test_the_cli_prints_the_estimate_then_the_spend(priced, thread_consumer, capsys):
    call_command("generate", "Crows at dusk", "--count", "4", "--wait", "--timeout", "60")
    out, _ = capsys.readouterr()
    request = GenerationRequest.objects.get()
    assert "estimated cost $0.05 (4 × $0.0125 per image)" in out
    assert "4 succeeded, 0 failed, 0 cancelled; spent $0.05" in out
    assert request.cost_spent == request.cost_estimate == Decimal("0.05")


# Budgets ----------------------------------------------------------------------------------
def test_request_budget_in_the_admin(priced, editor):
    priced["MAX_REQUEST_COST"] = Decimal("0.05")
    # 4 × 0.0125 is exactly the limit: allowed (not above it).
    assert editor.post(reverse(f"{NS}:add"), form_data(count=4)).status_code == 302
    GenerationRequest.objects.all().delete()

    for action in ({}, {"action-generate": "Save and generate"}):
        response = editor.post(reverse(f"{NS}:add"), form_data(count=5, **action))
        assert response.status_code == 200
        errors = response.context["form"].non_field_errors()
        assert errors == [
            "This request would cost $0.0625 (5 × $0.0125), above the limit of $0.05 per "
            "request (KARASU_MAX_REQUEST_COST). Ask for fewer images or choose a cheaper model."
        ]
        assert "above the limit of $0.05 per request" in response.content.decode()
        assert not GenerationRequest.objects.exists()
        assert not [t for t in HUEY.pending() if "expand" in t.name]  # nothing started


def test_monthly_budget_counts_spend_and_open_requests(priced, editor):
    priced["MAX_MONTHLY_COST"] = Decimal("0.10")
    now = timezone.now()
    done = make_request(with_jobs=False, count=4)
    GenerationRequest.objects.filter(pk=done.pk).update(
        status=Req.COMPLETED, jobs_total=4, jobs_succeeded=4, cost_spent=Decimal("0.05")
    )
    running = make_request(with_jobs=False, count=4)  # one image done, three may still be paid for
    GenerationRequest.objects.filter(pk=running.pk).update(
        status=Req.GENERATING, jobs_total=4, jobs_succeeded=1, cost_spent=Decimal("0.0125")
    )
    for request, amount in [(done, Decimal("0.0125"))] * 4 + [(running, Decimal("0.0125"))]:
        Spend.objects.create(request=request, amount=amount, spent_at=now)
    make_request(with_jobs=False, count=100)  # a draft never started: not committed
    last_month = make_request(with_jobs=False, count=40)  # paid last month: not this month's spend
    GenerationRequest.objects.filter(pk=last_month.pk).update(
        status=Req.COMPLETED,
        cost_spent=Decimal("0.5"),
    )
    Spend.objects.create(
        request=last_month,
        amount=Decimal("0.5"),
        spent_at=costs.period_starts()[1] - datetime.timedelta(days=1),
    )
    # 0.0625 spent + 0.0375 still open = 0.10: nothing more fits.
    assert costs.month_commitment() == (Decimal("0.0625"), Decimal("0.0375"))
    GenerationRequest.objects.filter(pk=running.pk).update(jobs_failed=1)  # one failed
    assert costs.month_commitment() == (Decimal("0.0625"), Decimal("0.025"))
    assert costs.budget_error(1, "demo") is None  # 0.0625 + 0.025 + 0.0125 = 0.10
    before = GenerationRequest.objects.count()
    response = editor.post(reverse(f"{NS}:add"), form_data(count=2))
    assert response.status_code == 200
    message = " ".join(response.context["form"].non_field_errors())
    assert "with $0.0625 spent this month and $0.025 still to come from open requests" in message
    assert "makes $0.1125, above the monthly budget of $0.10 (KARASU_MAX_MONTHLY_COST)" in message
    assert GenerationRequest.objects.count() == before


def test_a_copy_is_checked_against_the_budgets_like_a_new_request(priced, editor):
    """The copy view's form (filled in from the original) posts where the add form does, and
    the copy is a new request: its estimate counts in full, beside the original's."""
    import re

    original = make_request(with_jobs=False, count=5, theme="烏の朝")
    GenerationRequest.objects.filter(pk=original.pk).update(status=Req.GENERATING, jobs_total=5)
    page = editor.get(reverse(f"{NS}:copy", args=[original.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    [action] = re.findall(r'<form\s+id="w-editor-form"\s+action="([^"]+)"', html)
    assert action == reverse(f"{NS}:add")
    form = page.context["form"]
    copied = form_data(
        **{name: form[name].value() for name in ("theme", "count", "llm", "image_model")}
    )
    assert (copied["theme"], copied["count"]) == ("烏の朝", 5)

    def post_copy() -> str:
        before = GenerationRequest.objects.count()
        response = editor.post(action, copied)
        assert response.status_code == 200 and GenerationRequest.objects.count() == before
        return " ".join(response.context["form"].non_field_errors())

    # Per request: 5 × 0.0125 = 0.0625 is above 0.05.
    priced["MAX_REQUEST_COST"] = Decimal("0.05")
    assert "above the limit of $0.05 per request" in post_copy()
    # Per month: the original may still spend 0.0625, and the copy 0.0625 more.
    priced["MAX_REQUEST_COST"] = None
    priced["MAX_MONTHLY_COST"] = Decimal("0.12")
    assert "makes $0.125, above the monthly budget of $0.12" in post_copy()
    priced["MAX_MONTHLY_COST"] = Decimal("0.125")
    assert editor.post(action, copied).status_code == 302
    copy = GenerationRequest.objects.exclude(pk=original.pk).get()
    assert (copy.theme, copy.count, copy.status) == ("烏の朝", 5, Req.DRAFT)
    original.refresh_from_db()
    assert (original.status, original.jobs_total) == (Req.GENERATING, 5)

    # Posted to the copy view itself, the form would be saved onto the original, past the
    # budget check (not a new request); it is refused and changes nothing.
    priced["MAX_MONTHLY_COST"] = Decimal("0.01")
    forged = editor.post(
        reverse(f"{NS}:copy", args=[original.pk]), {**copied, "theme": "上書き", "count": 1}
    )
    assert forged.status_code == 405
    original.refresh_from_db()
    assert (original.theme, original.count) == ("烏の朝", 5)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KARASU_MAX_REQUEST_COST": "0.05"}, "above the limit of $0.05 per request"),
        ({"KARASU_MAX_MONTHLY_COST": "0.06"}, "above the monthly budget of $0.06"),
    ],
)
def test_the_cli_refuses_an_over_budget_request_in_one_line(env, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "generate", "Crows", "--count", "5"],
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        env=consumer_env(KARASU_DEMO_PRICE=PRICE, **env),
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "This request would cost $0.0625" in lines[0] and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not GenerationRequest.objects.exists()


# Where the figures show -------------------------------------------------------------------
def test_the_form_shows_prices_and_the_estimate(priced, editor):
    page = editor.get(reverse(f"{NS}:add")).content.decode()
    assert "Demo (offline) — $0.0125/image" in page
    assert 'data-controller="karasu-cost-estimate"' in page
    assert "generation/cost-estimate.js" in page
    assert "&quot;demo&quot;: &quot;0.0125&quot;" in page  # the prices the controller uses
    # Rendered with a value (Wagtail's panels fill theirs in the browser, where the
    # controller writes it; tests/e2e/test_cost_estimate_browser.py types into it).
    widget = CountWithEstimate()
    widget.model = "demo"
    assert "Estimated cost: $0.125 (10 × $0.0125 per image)" in widget.render("count", 10)
    assert "enter the number of images" in widget.render("count", "")


def test_the_request_page_include(priced):
    request = make_request(with_jobs=False, count=3)
    GenerationRequest.objects.filter(pk=request.pk).update(
        cost_spent=Decimal("0.025"), llm_input_tokens=1200, llm_output_tokens=345
    )
    request.refresh_from_db()
    html = render_to_string("generation/costs.html", {"request_obj": request})
    assert "$0.025 spent" in html
    assert "$0.0375 estimated (3 × $0.0125 per image)" in html
    assert "1200 in, 345 out" in html


def test_the_monitor_shows_spend_today_and_this_month(priced, editor):
    today, month = costs.period_starts()
    now = timezone.now()
    # Created last month and paid for over time: each image is booked when it is spent.
    request = make_request(with_jobs=False)
    GenerationRequest.objects.filter(pk=request.pk).update(
        created_at=month - datetime.timedelta(days=3)
    )
    for spent_at, spent in [
        (now, "0.0125"),
        (today - datetime.timedelta(microseconds=1), "0.25"),  # yesterday
        (month - datetime.timedelta(days=2), "7"),  # last month
    ]:
        Spend.objects.create(request=request, amount=Decimal(spent), spent_at=spent_at)
    # Yesterday is this month unless today is the 1st.
    month_spent = Decimal("0.2625") if today > month else Decimal("0.0125")
    assert costs.spend_summary() == {
        "today": Decimal("0.0125"),
        "month": month_spent,
        "today_usd": "$0.0125",
        "month_usd": costs.usd(month_spent),
    }
    page = editor.get("/admin/job-monitor/").content.decode()
    assert '<dd data-stat="spend-today">$0.0125</dd>' in page
    # In the part the monitor refreshes by itself, so spend grows on screen as images land.
    Spend.objects.create(request=request, amount=Decimal("1"), spent_at=now)
    live = editor.get(reverse("job_monitor:live")).content.decode()
    assert '<dd data-stat="spend-today">$1.0125</dd>' in live
    assert f'<dd data-stat="spend-month">{costs.usd(month_spent)}</dd>' in page


def test_generating_a_saved_draft_is_refused_over_budget(priced, editor):
    draft = make_request(with_jobs=False, count=5)  # saved before the budget was set
    priced["MAX_REQUEST_COST"] = Decimal("0.05")
    url = reverse(f"{NS}:action", args=[draft.pk, "generate"])
    response = editor.post(url, follow=True)
    assert "above the limit of $0.05 per request" in response.content.decode()
    draft.refresh_from_db()
    assert draft.status == Req.DRAFT
    assert not [t for t in HUEY.pending() if "expand" in t.name]


def test_saving_a_request_never_writes_back_what_workers_moved(priced):
    request = make_request(with_jobs=False, count=4)
    stale = GenerationRequest.objects.get(pk=request.pk)  # e.g. the edit form's copy
    jobs = write_prompts(request)
    services.finish_job(jobs[0].pk, Job.SUCCEEDED, request_id=request.pk)  # meanwhile
    stale.theme = "Crows at dusk"
    stale.save()
    request.refresh_from_db()
    assert request.theme == "Crows at dusk"
    assert (request.status, request.jobs_total, request.jobs_succeeded) == (Req.GENERATING, 4, 1)
    assert request.cost_spent == Decimal(PRICE)


def two_paid_two_failed() -> tuple[GenerationRequest, list[GenerationJob]]:
    """A request of 4 images: 2 succeeded ($0.025 spent), 2 failed."""
    request = make_request(with_jobs=False, count=4)
    jobs = write_prompts(request)
    for job in jobs[:2]:
        services.finish_job(job.pk, Job.SUCCEEDED, request_id=request.pk)
    for job in jobs[2:]:
        services.finish_job(job.pk, Job.FAILED, error="rejected", request_id=request.pk)
    return request, jobs


def test_retrying_and_regenerating_are_checked_against_the_monthly_budget(priced, editor):
    request, jobs = two_paid_two_failed()
    priced["MAX_MONTHLY_COST"] = Decimal("0.03")  # 0.025 spent: one more image is over
    retry = editor.post(reverse(f"{NS}:action", args=[request.pk, "retry_failed"]), follow=True)
    assert "above the monthly budget of $0.03" in retry.content.decode()
    assert request.jobs.filter(status=Job.FAILED).count() == 2
    regenerate = editor.post(reverse(f"{NS}:job_generate", args=[jobs[0].pk]), follow=True)
    assert "above the monthly budget of $0.03" in regenerate.content.decode()
    assert request.jobs.get(pk=jobs[0].pk).status == Job.SUCCEEDED


def test_nano_banana_pro_at_4k_is_priced_double(settings):
    models = settings.KARASU["IMAGE_MODELS"]
    assert costs.price_per_image("nano-banana-pro") == Decimal("0.15")
    models["nano-banana-pro"] = {**models["nano-banana-pro"], "RESOLUTION": "4K"}
    assert costs.price_per_image("nano-banana-pro") == Decimal("0.30")


def test_the_monitors_retry_of_an_expansion_is_checked_against_the_budget(priced, editor):
    from huey_tasks.models import TaskRun

    request = make_request(with_jobs=False, count=5, status=Req.FAILED)
    run = TaskRun.objects.create(
        task_name="generation.tasks.expand_prompt",
        task_id="expand-1",
        status=TaskRun.Status.FAILED,
        args=[request.pk],
        generation_request_id=request.pk,
    )
    priced["MAX_REQUEST_COST"] = Decimal("0.05")
    response = editor.post(reverse("job_monitor:run_retry", args=[run.pk]), follow=True)
    assert "above the limit of $0.05 per request" in response.content.decode()
    request.refresh_from_db()
    assert request.status == Req.FAILED


def start_two_at_once(monkeypatch, lock) -> list[GenerationRequest]:
    """Two drafts started by two threads, the second while the first is between its budget
    check and its start; returns them refreshed."""
    import threading

    from django.db import connection

    from generation import actions

    monkeypatch.setattr(costs, "budget_lock", lock)
    drafts = [make_request(with_jobs=False, count=4), make_request(with_jobs=False, count=4)]
    first_checked = threading.Event()
    second_read = threading.Event()
    real_commitment = costs.month_commitment

    def slow_commitment(*args, **kwargs):
        result = real_commitment(*args, **kwargs)
        if threading.current_thread().name == "first":
            first_checked.set()
            # The window in which the other start reads the month: until it has (without
            # the lock), or for 3 s (with it, the other start waits for this one's commit).
            second_read.wait(3)
        else:
            second_read.set()
        return result

    monkeypatch.setattr(costs, "month_commitment", slow_commitment)
    outcomes = {}

    def start(draft):
        try:
            outcomes[draft.pk] = actions.run(actions.ACTIONS["generate"], draft)
        finally:
            connection.close()

    first = threading.Thread(target=start, args=(drafts[0],), name="first")
    second = threading.Thread(target=start, args=(drafts[1],), name="second")
    first.start()
    assert first_checked.wait(10)
    second.start()
    for thread in (first, second):
        thread.join(20)
    return [GenerationRequest.objects.get(pk=draft.pk) for draft in drafts]


def test_two_starts_at_once_cannot_both_fit_into_the_last_of_the_budget(priced, monkeypatch):
    priced["MAX_MONTHLY_COST"] = Decimal("0.06")  # room for one request of 4 × 0.0125
    started = start_two_at_once(monkeypatch, costs.budget_lock)
    assert [r.status for r in started] == [Req.QUEUED, Req.DRAFT]
    assert costs.month_commitment()[1] == Decimal("0.0500")


def test_without_the_budget_lock_both_starts_would_fit(priced, monkeypatch):
    """The control: the race the lock closes is real (so the test above can fail)."""
    import contextlib

    priced["MAX_MONTHLY_COST"] = Decimal("0.06")
    started = start_two_at_once(monkeypatch, contextlib.nullcontext)
    assert [r.status for r in started] == [Req.QUEUED, Req.QUEUED]


def test_regenerations_cannot_take_a_request_past_the_per_request_limit(priced, editor):
    request = make_request(with_jobs=False, count=4)  # $0.05, exactly the limit below
    jobs = write_prompts(request)
    for job in jobs:
        services.finish_job(job.pk, Job.SUCCEEDED, request_id=request.pk)
    priced["MAX_REQUEST_COST"] = Decimal("0.0625")  # one more image fits, not two
    first = editor.post(reverse(f"{NS}:job_generate", args=[jobs[0].pk]), follow=True)
    assert "Generating prompt #1." in first.content.decode()
    services.finish_job(jobs[0].pk, Job.SUCCEEDED, request_id=request.pk)  # paid again
    second = editor.post(reverse(f"{NS}:job_generate", args=[jobs[1].pk]), follow=True)
    assert (
        "1 more × $0.0125 would take this request to $0.075 ($0.0625 spent), above the "
        "limit of $0.0625 per request"
    ) in second.content.decode()
    assert GenerationJob.objects.get(pk=jobs[1].pk).status == Job.SUCCEEDED


def test_today_and_this_month_are_the_sites_not_the_editors(priced, settings):
    """Wagtail activates each editor's own time zone; the budget month must not move."""
    settings.TIME_ZONE = "UTC"
    now = datetime.datetime(2026, 12, 1, 3, 0, tzinfo=datetime.UTC)
    with timezone.override("America/New_York"):  # still 30 November there
        today, month = costs.period_starts(now)
    assert (today, month) == (
        datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC),
        datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC),
    )


def test_count_and_model_are_fixed_from_the_start_not_only_once_prompts_exist(priced, editor):
    # The LLM was asked for 2 prompts.
    request = make_request(with_jobs=False, count=2, status=Req.EXPANDING)
    data = form_data(count=400, image_model="demo")
    response = editor.post(reverse(f"{NS}:edit", args=[request.pk]), data)
    assert response.status_code == 302
    request.refresh_from_db()
    assert request.count == 2 and request.cost_estimate == Decimal("0.0250")
    form = editor.get(reverse(f"{NS}:edit", args=[request.pk])).context["form"]
    assert form.fields["count"].disabled
    assert form.fields["count"].help_text == "Fixed once generation has started."


def test_a_start_uses_the_count_as_it_is_when_it_starts(priced):
    """An edit that committed after the view read the draft: nothing starts on old values."""
    from generation import actions

    draft = make_request(with_jobs=False, count=10)
    stale = GenerationRequest.objects.get(pk=draft.pk)
    GenerationRequest.objects.filter(pk=draft.pk).update(count=40, cost_estimate=Decimal("0.5"))
    assert not services.start_request(stale)  # a caller without the lock: refused
    message, error = actions.run(actions.ACTIONS["generate"], stale)  # re-read under it
    assert message and error is None
    draft.refresh_from_db()
    assert (draft.status, draft.count, draft.cost_estimate) == (Req.QUEUED, 40, Decimal("0.5"))


def test_starting_again_clears_the_last_attempts_expansion_times(priced):
    draft = make_request(with_jobs=False, count=2, status=Req.FAILED)
    GenerationRequest.objects.filter(pk=draft.pk).update(
        expansion_started_at=timezone.now(), expansion_finished_at=timezone.now()
    )
    assert services.start_request(draft)
    draft.refresh_from_db()
    assert draft.expansion_started_at is None and draft.expansion_finished_at is None


def test_a_malformed_price_stops_the_system_check(settings):
    from django.core.management.base import SystemCheckError

    call_command("check")
    settings.KARASU["IMAGE_MODELS"]["demo"] = {
        **settings.KARASU["IMAGE_MODELS"]["demo"],
        "PRICE": "twelve cents",
    }
    with pytest.raises(SystemCheckError, match=r"'demo'\] PRICE: 'twelve cents' is not a decimal"):
        call_command("check")


def test_the_monitors_retry_failed_is_the_request_pages_with_its_checks(priced, editor):
    request, jobs = two_paid_two_failed()
    url = reverse("job_monitor:request_retry_failed", args=[request.pk])
    priced["MAX_MONTHLY_COST"] = Decimal("0.03")  # 0.025 spent: two more images are over
    page = editor.post(url, follow=True).content.decode()
    assert "above the monthly budget of $0.03" in page
    assert request.jobs.filter(status=Job.FAILED).count() == 2

    # A cancelled request stays cancelled: nothing of it runs again, from either page.
    priced["MAX_MONTHLY_COST"] = None
    services.cancel_request(request)
    editor.post(url)
    editor.post(reverse(f"{NS}:action", args=[request.pk, "retry_failed"]))
    request.refresh_from_db()
    assert request.status == Req.CANCELLED
    assert request.jobs.filter(status=Job.FAILED).count() == 2
    assert services.reset_failed_jobs(request) == []
