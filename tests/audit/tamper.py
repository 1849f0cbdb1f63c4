"""Tampering as an attacker with database superuser rights would: ordinary triggers (our append-only
guards) switched off for one session, then raw SQL against the audit tables."""
from contextlib import contextmanager

from django.db import connection


@contextmanager
def triggers_off():
    """Superuser only: the append-only triggers do not fire for statements on this cursor."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            yield cursor
        finally:
            cursor.execute("SET session_replication_role = DEFAULT")


def execute_with_triggers_off(sql, params=None):
    with triggers_off() as cursor:
        cursor.execute(sql, params)
