"""python manage.py generate "THEME" --count N [--llm] [--image-model] [--collection]
[--source-image ID] [--wait] [--timeout S]"""

from __future__ import annotations

import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.translation import gettext as _
from tqdm import tqdm
from wagtail.images import get_image_model
from wagtail.models import Collection

from generation import costs
from generation.actions import ACTIONS, run
from generation.forms import GenerationRequestForm, default_image_model
from generation.models import GenerationRequest


class Command(BaseCommand):
    help = "Create a generation request and start it; --wait shows its progress until done."

    def add_arguments(self, parser):
        parser.add_argument("theme")
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--llm")
        parser.add_argument("--image-model")
        parser.add_argument("--collection", help="Collection name (default: Generated images)")
        parser.add_argument("--aspect-ratio", default="1:1")
        parser.add_argument("--style", default="")
        parser.add_argument("--brief", default="")
        parser.add_argument(
            "--source-image",
            type=int,
            metavar="ID",
            help="Make variations of this library image (with an image-editing model)",
        )
        parser.add_argument("--wait", action="store_true", help="Wait for the request to finish")
        parser.add_argument("--timeout", type=float, default=3600, help="Seconds to --wait")

    def handle(self, *args, **options):
        request = self.create_request(options)
        price = costs.unit_price(request.cost_estimate, request.count)
        figures = {
            "pk": request.pk,
            "count": request.count,
            "theme": request.theme,
            "source": request.source_image_id,
            "estimate": costs.usd(request.cost_estimate),
            "price": costs.usd(price),
        }
        if request.source_image_id:
            line = _(
                "Request #%(pk)s: %(count)s images of “%(theme)s” (variations of image "
                "#%(source)s), estimated cost %(estimate)s (%(count)s × %(price)s per image)"
            )
        else:
            line = _(
                "Request #%(pk)s: %(count)s images of “%(theme)s”, estimated cost %(estimate)s "
                "(%(count)s × %(price)s per image)"
            )
        self.stdout.write(line % figures)
        if not options["wait"]:
            return
        request = self.wait(request, options["timeout"])
        summary = _(
            "Request #%(pk)s %(status)s: %(succeeded)s succeeded, %(failed)s failed, "
            "%(cancelled)s cancelled; spent %(spent)s"
        ) % {
            "pk": request.pk,
            "status": request.get_status_display().lower(),
            "succeeded": request.jobs_succeeded,
            "failed": request.jobs_failed,
            "cancelled": request.jobs_cancelled,
            "spent": costs.usd(request.cost_spent),
        }
        if request.status != GenerationRequest.Status.COMPLETED:
            raise CommandError(summary)
        self.stdout.write(self.style.SUCCESS(summary))

    def create_request(self, options) -> GenerationRequest:
        data = {
            "theme": options["theme"],
            "brief": options["brief"],
            "style": options["style"],
            "count": options["count"],
            "llm": options["llm"] or GenerationRequest._meta.get_field("llm").get_default(),
            "image_model": options["image_model"]
            or default_image_model(editing=options["source_image"] is not None),
            "aspect_ratio": options["aspect_ratio"],
            "auto_generate": True,
            "tags": "",
        }
        if options["collection"]:
            collection = Collection.objects.filter(name=options["collection"]).first()
            if collection is None:
                raise CommandError(
                    _("unknown collection %(name)s") % {"name": repr(options["collection"])}
                )
            data["collection"] = collection.pk
        else:
            data["collection"] = GenerationRequest._meta.get_field("collection").get_default()
        if options["source_image"] is not None:
            if not get_image_model().objects.filter(pk=options["source_image"]).exists():
                raise CommandError(
                    _("unknown image %(pk)s (--source-image)") % {"pk": options["source_image"]}
                )
            data["source_image"] = options["source_image"]
        form = GenerationRequestForm(data=data)
        if not form.is_valid():
            raise CommandError(one_line(form.errors.as_data()))
        with transaction.atomic():
            request = form.save()
            # The form checked the budgets. They are checked again as the request starts,
            # under the budget lock, in case another request started in the meantime. If the
            # start is refused, nothing is kept.
            __, error = run(ACTIONS["generate"], request)
            if error:
                transaction.set_rollback(True)
        if error:
            raise CommandError(error)
        return request

    def wait(self, request: GenerationRequest, timeout: float) -> GenerationRequest:
        deadline = time.monotonic() + timeout
        with tqdm(
            total=request.count,
            unit="img",
            desc="generating",
            dynamic_ncols=True,
            file=self.stderr._out,
        ) as bar:
            while True:
                request.refresh_from_db()
                if request.jobs_total and bar.total != request.jobs_total:
                    bar.total = request.jobs_total
                bar.n = request.jobs_done
                bar.set_postfix(
                    done=request.jobs_succeeded, failed=request.jobs_failed, refresh=False
                )
                bar.refresh()
                if request.is_terminal:
                    return request
                if time.monotonic() >= deadline:
                    raise CommandError(
                        _(
                            "timed out after %(seconds)ss: request #%(pk)s is %(status)s "
                            "(%(done)s/%(total)s done)"
                        )
                        % {
                            "seconds": f"{timeout:.0f}",
                            "pk": request.pk,
                            "status": request.get_status_display().lower(),
                            "done": request.jobs_done,
                            "total": request.jobs_total or request.count,
                        }
                    )
                time.sleep(0.5)


def one_line(errors: dict[str, list[ValidationError]]) -> str:
    parts = []
    for field, field_errors in errors.items():
        for error in field_errors:
            message = " ".join(error.messages)
            parts.append(message if field == "__all__" else f"{field}: {message}")
    return "; ".join(parts)
