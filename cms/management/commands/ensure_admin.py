import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils.translation import gettext as _
from environ import Env


class Command(BaseCommand):
    help = (
        "Create a superuser if the database has none: KARASU_ADMIN_USER / "
        "KARASU_ADMIN_PASSWORD, else 'admin' with a random password printed once."
    )

    def handle(self, *args, **options) -> None:
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(_("An admin user exists already."))
            return
        env = Env()
        username = env.str("KARASU_ADMIN_USER", default="admin")
        password = env.str("KARASU_ADMIN_PASSWORD", default="")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        if generated:
            self.stdout.write(
                self.style.SUCCESS(
                    _("Created admin user %(name)s with password %(password)s")
                    % {"name": repr(username), "password": password}
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(_("Created admin user %(name)s.") % {"name": repr(username)})
            )
