"""What image generation costs: prices, estimates, spend and budgets, in USD as exact Decimals.

Prices
    ``settings.KARASU["IMAGE_MODELS"][name]["PRICE"]``: USD per image as a decimal string with
    at most four decimal places (the precision of the cost fields). A model without one costs 0.

Estimate
    ``GenerationRequest.cost_estimate`` = count × price, set whenever a request is saved while
    it has no prompts yet (any save path: the ``pre_save`` receiver below). Once its prompts
    exist, its count and image model are fixed (forms.LOCKED_AFTER_START) and so is the
    estimate.

Spend
    ``GenerationRequest.cost_spent`` grows by the request's price per image in the same UPDATE
    that counts a succeeded job (services.finish_job). That price is estimate ÷ count: the price
    in effect when the request was saved, so nothing else needs storing and a later change of
    PRICE never reprices work already started. A paid image is never taken back out: the
    earlier image of a job regenerated with a new seed was paid for and stays in the library
    (services.regenerate_job leaves the spend alone; the new image adds its own). So
    ``cost_spent`` = images delivered × price, which can exceed the estimate after regenerations.

Periods and budgets
    Each paid image is booked in the ``Spend`` ledger at the moment it succeeded, so "today"
    and "this month" (site time zone) count what was made then, whenever its request began.
    ``KARASU["MAX_REQUEST_COST"]`` refuses a request whose estimate is above it;
    ``KARASU["MAX_MONTHLY_COST"]`` refuses one when this month's spend, plus what this month's
    open requests may still spend (their jobs not yet finished × their price), plus its own
    estimate would go above it. Unset (None) means no limit.

    Check and start happen under ``budget_lock()``, so two editors starting requests at the
    same moment cannot both fit into the last of a budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Q, Sum
from django.db.models.signals import pre_save
from django.dispatch import receiver
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from generation.models import GenerationRequest, Spend

# The key of the PostgreSQL advisory lock that budget checks take in turn (any fixed bigint).
BUDGET_LOCK_KEY = 0x6B61726173750001
PLACES = Decimal("0.0001")  # the cost fields' decimal_places
ZERO = Decimal("0")
Req = GenerationRequest.Status


# Amounts ----------------------------------------------------------------------------------
def parse_usd(value, what: str) -> Decimal:
    """A configured USD amount: a decimal string (or int/Decimal), >= 0, at most 4 places."""
    if isinstance(value, float):
        raise ImproperlyConfigured(f'{what}: give the amount as a string, e.g. "0.025"')
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ImproperlyConfigured(f"{what}: {value!r} is not a decimal amount in USD") from None
    if not amount.is_finite() or amount < 0:
        raise ImproperlyConfigured(f"{what}: {value!r} is not a positive amount in USD")
    if amount != amount.quantize(PLACES):
        raise ImproperlyConfigured(f"{what}: {value!r} has more than 4 decimal places")
    return amount


def usd(amount) -> str:
    """$1,234.50 / $0.003 / $0.00: two decimals, up to four when the amount needs them.

    Separators are the active language's (Django's formats); the amount stays exact, as
    number_format formats a Decimal without going through a float."""
    value = Decimal(amount).quantize(PLACES)
    places = max(2, len(f"{value:.4f}".split(".")[1].rstrip("0")))
    return "$" + formats.number_format(value, decimal_pos=places, force_grouping=True)


def price_per_image(model: str) -> Decimal:
    config = settings.KARASU["IMAGE_MODELS"].get(model) or {}
    resolution = str(config.get("RESOLUTION") or "").strip().upper()  # as fal.py reads it
    if resolution == "4K" and "PRICE_4K" in config:  # Nano Banana Pro at 4K
        return parse_usd(config["PRICE_4K"], f"KARASU IMAGE_MODELS[{model!r}] PRICE_4K")
    return parse_usd(config.get("PRICE", "0"), f"KARASU IMAGE_MODELS[{model!r}] PRICE")


def prices() -> dict[str, Decimal]:
    return {name: price_per_image(name) for name in settings.KARASU["IMAGE_MODELS"]}


def estimate(count: int, model: str) -> Decimal:
    return (price_per_image(model) * int(count)).quantize(PLACES)


def unit_price(cost_estimate, count: int) -> Decimal:
    """The price per image a request was saved with (its estimate is count × price)."""
    if not count:
        return ZERO
    return (Decimal(cost_estimate) / int(count)).quantize(PLACES)


def request_unit_price(request_id: int) -> Decimal:
    row = (
        GenerationRequest.objects.filter(pk=request_id)
        .values_list("cost_estimate", "count")
        .first()
    )
    return unit_price(*row) if row else ZERO


@receiver(pre_save, sender=GenerationRequest, dispatch_uid="generation.costs.set_estimate")
def set_estimate(sender, instance: GenerationRequest, update_fields=None, **kwargs) -> None:
    """Set the estimate (count × price) on every save of a request without prompts, from
    the admin form, the CLI or code."""
    if instance.jobs_total or (update_fields is not None and "cost_estimate" not in update_fields):
        return
    instance.cost_estimate = estimate(instance.count, instance.image_model)


# Periods ----------------------------------------------------------------------------------
def period_starts(now=None) -> tuple:
    """The start of today and of this month in the site's time zone."""
    # Use the site's zone, not the viewing user's (Wagtail activates each editor's own), so
    # that every editor, the CLI and the workers see the same day and month.
    local = timezone.localtime(now, timezone.get_default_timezone())
    today = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return today, today.replace(day=1)


def spend_summary(now=None) -> dict:
    """Spend today and this month (images booked when they succeeded), in one query."""
    today, month = period_starts(now)
    sums = Spend.objects.filter(spent_at__gte=month).aggregate(
        today=Sum("amount", filter=Q(spent_at__gte=today)),
        month=Sum("amount"),
    )
    today_spent = Decimal(sums["today"] or 0).quantize(PLACES)
    month_spent = Decimal(sums["month"] or 0).quantize(PLACES)
    return {
        "today": today_spent,
        "month": month_spent,
        "today_usd": usd(today_spent),
        "month_usd": usd(month_spent),
    }


def open_requests() -> Q:
    """Requests that may still spend: active, or drafts whose prompts await review."""
    return Q(status__in=GenerationRequest.ACTIVE) | Q(status=Req.DRAFT, jobs_total__gt=0)


def month_commitment(exclude_pk=None, now=None) -> tuple[Decimal, Decimal]:
    """Return (spent, still open): the images paid for this month, and what the open
    requests' unfinished jobs may still cost at their own price, whenever they were
    created."""
    _, month = period_starts(now)
    spent = Spend.objects.filter(spent_at__gte=month).aggregate(spent=Sum("amount"))["spent"]
    spent = Decimal(spent or 0).quantize(PLACES)
    still_open = GenerationRequest.objects.filter(open_requests())
    if exclude_pk is not None:
        still_open = still_open.exclude(pk=exclude_pk)  # the request being checked itself
    remaining = ZERO
    for request in still_open.only(
        "count",
        "cost_estimate",
        "jobs_total",
        "jobs_succeeded",
        "jobs_failed",
        "jobs_cancelled",
        "expansion_finished_at",
    ):
        remaining += still_to_spend(request)
    return spent, remaining.quantize(PLACES)


def still_to_spend(request: GenerationRequest) -> Decimal:
    """What a request's unfinished images may still cost, at its own price per image.

    Once its expansion has ended, its jobs are counted, as the LLM may have written fewer
    prompts than asked. Until then its count is used, as its prompts are still being
    written."""
    expanding = request.expansion_finished_at is None
    planned = max(request.jobs_total, request.count) if expanding else request.jobs_total
    left = max(planned - request.jobs_succeeded - request.jobs_failed - request.jobs_cancelled, 0)
    return unit_price(request.cost_estimate, request.count) * left


# Budgets ----------------------------------------------------------------------------------
def limit(name: str) -> Decimal | None:
    value = settings.KARASU.get(name)
    if value is None or value == "":
        return None
    return parse_usd(value, f"KARASU {name}")


@contextmanager
def budget_lock() -> Iterator[None]:
    """A transaction in which a budget check and the start it allows happen alone.

    Without it, two starts could each read the month's commitment before either counts, and
    both fit into what is left for one. SQLite's IMMEDIATE transactions (cms/settings)
    already hold the write lock from BEGIN; PostgreSQL takes an advisory lock until commit.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [BUDGET_LOCK_KEY])
        yield


def budget_error(
    count: int, model: str, *, exclude_pk=None, request: GenerationRequest | None = None
) -> str | None:
    """Why ``count`` more images of ``model`` are over budget; None if they are not.

    With ``request``, they are more images of that request (a retry, a regeneration), so
    its spend and its unfinished images count towards the per-request limit too."""
    cost = estimate(count, model)
    per_request = limit("MAX_REQUEST_COST")
    if per_request is not None and request is not None:
        already = request.cost_spent + still_to_spend(request)
        if already + cost > per_request:
            return _(
                "%(count)s more × %(price)s would take this request to %(total)s "
                "(%(spent)s spent), above the limit of %(limit)s per request "
                "(KARASU_MAX_REQUEST_COST)."
            ) % {
                "count": count,
                "price": usd(price_per_image(model)),
                "total": usd(already + cost),
                "spent": usd(request.cost_spent),
                "limit": usd(per_request),
            }
    elif per_request is not None and cost > per_request:
        return _(
            "This request would cost %(cost)s (%(count)s × %(price)s), above the limit of "
            "%(limit)s per request (KARASU_MAX_REQUEST_COST). Ask for fewer images or choose "
            "a cheaper model."
        ) % {
            "cost": usd(cost),
            "count": count,
            "price": usd(price_per_image(model)),
            "limit": usd(per_request),
        }
    monthly = limit("MAX_MONTHLY_COST")
    if monthly is not None:
        spent, remaining = month_commitment(exclude_pk)
        total = spent + remaining + cost
        if total > monthly:
            return _(
                "This request would cost %(cost)s; with %(spent)s spent this month and "
                "%(remaining)s still to come from open requests that makes %(total)s, above "
                "the monthly budget of %(limit)s (KARASU_MAX_MONTHLY_COST)."
            ) % {
                "cost": usd(cost),
                "spent": usd(spent),
                "remaining": usd(remaining),
                "total": usd(total),
                "limit": usd(monthly),
            }
    return None


# Display ----------------------------------------------------------------------------------
def request_costs(request: GenerationRequest) -> dict:
    """The figures of a request's page (generation/costs.html)."""
    price = unit_price(request.cost_estimate, request.count)
    return {
        "estimate": request.cost_estimate,
        "spent": request.cost_spent,
        "price": price,
        "estimate_usd": usd(request.cost_estimate),
        "spent_usd": usd(request.cost_spent),
        "price_usd": usd(price),
        "count": request.count,
        "llm_input_tokens": request.llm_input_tokens,
        "llm_output_tokens": request.llm_output_tokens,
    }


def cost_cell(request: GenerationRequest) -> str:
    """The listing's cost column: spent of the estimate."""
    return _("%(spent)s of %(estimate)s") % {
        "spent": usd(request.cost_spent),
        "estimate": usd(request.cost_estimate),
    }


def price_label(label: str, price: Decimal) -> str:
    return _("%(model)s — %(price)s/image") % {"model": label, "price": usd(price)}


def prices_json() -> str:
    """Every model's price, for the form's estimate as you type (cost-estimate.js)."""
    return json.dumps({name: format(price, "f") for name, price in prices().items()})
