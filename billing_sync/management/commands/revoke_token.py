"""`manage.py revoke_token (TOKEN_ID | --user USERNAME [--all])`: revoke API tokens, audited, effective at
once in every process; prints what it revoked as the last line (`revoked 12 tko_AbCdEf (billing-prod)`, one
token per `, `). `--user` alone revokes that user's only unrevoked token and refuses when it has several (name
one by id, or pass `--all`)."""
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from billing_sync import selectors, tokens
from config import correlation
from config.errors import TieoutError

ACTOR = "cli:revoke_token"


class Command(BaseCommand):
    help = "Revoke an API token by id, or a user's token(s); prints what was revoked."

    def add_arguments(self, parser):
        parser.add_argument("token_id", nargs="?", type=int,
                            help="The token's id (GET /api/v1/tokens, or the admin's token list).")
        parser.add_argument("--user", dest="username", metavar="USERNAME", help="Revoke this user's token.")
        parser.add_argument("--all", dest="revoke_all", action="store_true",
                            help="With --user: every unrevoked token of the user.")

    def handle(self, *args, token_id, username, revoke_all, **options):
        if (token_id is None) == (username is None):
            raise CommandError("name a TOKEN_ID or --user USERNAME (not both)")
        if revoke_all and username is None:
            raise CommandError("--all goes with --user")
        if token_id is not None:
            ids = [token_id]
        else:
            held = selectors.unrevoked_tokens_of(username)
            if not held:
                raise CommandError(f"{username} has no unrevoked token")
            if len(held) > 1 and not revoke_all:
                listed = ", ".join(f"{t.pk} {t.prefix} ({t.name or 'no name'})" for t in held)
                raise CommandError(f"{username} has {len(held)} unrevoked tokens ({listed}): name one by id, or "
                                   "pass --all")
            ids = [t.pk for t in held]
        try:
            with correlation.bound(None), transaction.atomic():
                revoked = [tokens.token_revoke(token_id=pk, actor=ACTOR) for pk in ids]
        except TieoutError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from None
        self.stdout.write("revoked " + ", ".join(f"{t.pk} {t.prefix} ({t.user.get_username()})" for t in revoked))
