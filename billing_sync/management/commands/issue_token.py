"""`manage.py issue_token USERNAME --role ROLE [--password-env VAR] [--source-system NAME ...] [--entity CODE
...] [--expires-in DAYS | --expires YYYY-MM-DD]`: prints a new API token (last line). `--entity` binds an
`integration` token to the entities it may send events for, and is the user's entity access for staff roles;
`--source-system` binds the token to those source systems; without them a token is unbound."""
import datetime
import os

from django.core.management.base import BaseCommand, CommandError

from billing_sync import tokens
from config import correlation, roles
from config.errors import TieoutError


def _day(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--expires wants a date YYYY-MM-DD, not {value!r}") from None


class Command(BaseCommand):
    help = "Create the user if absent, give it ROLE (and a password from VAR), issue a token and print it."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=roles.ROLES)
        parser.add_argument("--password-env", dest="password_env")
        parser.add_argument("--name", default="", help="A label for the token (which system holds it).")
        parser.add_argument("--entity", dest="entities", action="append", metavar="CODE",
                            help="integration: the token may send events of this entity only (repeat for several; "
                                 "default: any). Other roles: scope the user to this entity; default: every entity "
                                 "for a new user, unchanged for an existing one.")
        parser.add_argument("--source-system", dest="source_systems", action="append", metavar="NAME",
                            help="The token may send events of this source system only (repeat for several; "
                                 "default: any).")
        expiry = parser.add_mutually_exclusive_group()
        expiry.add_argument("--expires-in", dest="expires_in", type=int, metavar="DAYS",
                            help="The token stops working DAYS days from now (default: never; revoke it instead).")
        expiry.add_argument("--expires", dest="expires", type=_day, metavar="YYYY-MM-DD",
                            help="The token stops working at 00:00 UTC on this date.")

    def handle(self, *args, username, role, password_env, name, entities, source_systems, expires_in, expires,
               **options):
        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"environment variable {password_env} is empty or unset")
        expires_at = None
        if expires_in is not None:
            if expires_in < 1:
                raise CommandError("--expires-in wants a number of days, at least 1")
            expires_at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=expires_in)
        elif expires is not None:
            expires_at = datetime.datetime.combine(expires, datetime.time.min, tzinfo=datetime.UTC)
        # For a source system, --entity is what its token may send; for people, what they may see.
        user_entities, token_entities = (None, entities) if role == roles.INTEGRATION else (entities, None)
        try:
            with correlation.bound(None):
                raw = tokens.token_issue(username=username, role=role, password=password, name=name,
                                         actor="cli:issue_token", entities=user_entities,
                                         source_systems=source_systems, token_entities=token_entities,
                                         expires_at=expires_at)
        except TieoutError as exc:
            problems = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors or [])
            raise CommandError(f"{exc.code}: {exc.detail}" + (f" ({problems})" if problems else "")) from None
        self.stdout.write(raw)
