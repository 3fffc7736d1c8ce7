"""Create the `admin` superuser once, and say how to log in (used by `make run`)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

PASSWORD_FILE = Path(settings.BASE_DIR) / ".admin-password"
CHANGE_HINT = "change it with `python manage.py changepassword admin`"


class Command(BaseCommand):
    requires_system_checks = []  # keep the output clean: it is read by scripts
    help = "Create the admin user if missing (password from DJANGO_SUPERUSER_PASSWORD, else generated once)."

    def handle(self, *args, **options) -> None:
        User = get_user_model()
        admin = User.objects.filter(username="admin").first()
        if admin is not None:
            # The password is printed once, when it is made: `make run`'s output ends up in terminals
            # and logs on every start.
            if PASSWORD_FILE.exists() and admin.check_password(PASSWORD_FILE.read_text().strip()):
                where = f"password in {PASSWORD_FILE.name} (generated on the first run)"
            else:
                where = "password as you set it"
            self.stdout.write(f"Admin login: user admin, {where}; {CHANGE_HINT}.")
            return
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD", "")
        if password:
            message = "password from DJANGO_SUPERUSER_PASSWORD"
        else:
            password = secrets.token_urlsafe(12)
            PASSWORD_FILE.write_text(password + "\n")
            PASSWORD_FILE.chmod(0o600)
            message = f"password {password} (generated, kept in {PASSWORD_FILE.name})"
        User.objects.create_superuser("admin", "admin@localhost", password)
        self.stdout.write(f"Created admin login: user admin, {message}; {CHANGE_HINT}.")
