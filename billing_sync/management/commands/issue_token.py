"""`manage.py issue_token USERNAME --role ROLE [--password-env VAR]`: prints a new API token (last line)."""
import os

from django.core.management.base import BaseCommand, CommandError

from billing_sync import tokens
from config import correlation, roles


class Command(BaseCommand):
    help = "Create the user if absent, give it ROLE (and a password from VAR), issue a token and print it."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--role", required=True, choices=roles.ROLES)
        parser.add_argument("--password-env", dest="password_env")
        parser.add_argument("--name", default="", help="A label for the token (which system holds it).")
        parser.add_argument("--entity", dest="entities", action="append", metavar="CODE",
                            help="Scope the user to this entity (repeat for several); default: every entity "
                                 "for a new user, unchanged for an existing one.")

    def handle(self, *args, username, role, password_env, name, entities, **options):
        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"environment variable {password_env} is empty or unset")
        with correlation.bound(None):
            raw = tokens.token_issue(username=username, role=role, password=password, name=name,
                                     actor="cli:issue_token", entities=entities)
        self.stdout.write(raw)
