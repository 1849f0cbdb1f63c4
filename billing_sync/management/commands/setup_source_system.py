"""`manage.py setup_source_system NAME --callback-url URL --secret-env VAR [--inactive]`: idempotent; creates
or updates the source system whose events (`source_system` = NAME) get status callbacks at URL, signed with
the Standard Webhooks secret (`whsec_<base64>`) held in environment variable VAR. The secret itself is never
passed, stored or printed. The last line printed is NAME."""
import os

from django.core.management.base import BaseCommand, CommandError

from billing_sync import callbacks
from config import correlation
from config.errors import TieoutError

ACTOR = "cli:setup_source_system"


class Command(BaseCommand):
    help = "Configure status callbacks (URL and signing-secret variable) for a source system."

    def add_arguments(self, parser):
        parser.add_argument("name", help="The source_system name its events carry")
        parser.add_argument("--callback-url", required=True, help="Where signed status callbacks are POSTed")
        parser.add_argument("--secret-env", required=True,
                            help="Environment variable holding the Standard Webhooks secret (whsec_<base64>)")
        parser.add_argument("--inactive", action="store_true", help="Keep the settings but send nothing")

    def handle(self, *args, name, callback_url, secret_env, inactive, **options):
        with correlation.bound(None):
            try:
                source, outcome = callbacks.source_system_configure(
                    name=name, callback_url=callback_url, secret_env=secret_env, is_active=not inactive, actor=ACTOR)
            except TieoutError as exc:
                problems = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors or [])
                raise CommandError(f"{exc.detail}: {problems}" if problems else exc.detail) from None
        if not os.environ.get(source.secret_env):
            # Only a hint: the workers that sign need it, not necessarily this shell.
            self.stderr.write(f"note: {source.secret_env} is not set in this environment; the callback workers "
                              "need it")
        self.stdout.write(f"{outcome} {source.name} callback_url={source.callback_url} "
                          f"secret_env={source.secret_env} active={'yes' if source.is_active else 'no'}")
        self.stdout.write(source.name)
