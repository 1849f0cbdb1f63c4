"""The database connection's settings that the worker's speed rests on: parameters bound by the server, statements
prepared from their fifth run (and a way to turn that off behind an old pooler), and the pending events' key
index kept without GIN's pending list on the table and every partition."""
import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

from audit import services as audit

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parents[2]


def test_a_statement_run_five_times_is_prepared_on_the_server():
    text = "SELECT count(*) FROM billing_sync_event WHERE seq > %s -- prepared-check"
    with connection.cursor() as cursor:
        for n in range(6):
            cursor.execute(text, [n])
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("prepared-check" in statement and "$1" in statement for statement in prepared), prepared


def test_prepared_statements_can_be_turned_off_for_an_old_pooler():
    code = ("import django; django.setup(); from django.conf import settings; "
            "o = settings.DATABASES['default']['OPTIONS']; print(o['server_side_binding'], o['prepare_threshold'])")
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.test")
    default = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
    off = subprocess.run([sys.executable, "-c", code], cwd=BASE_DIR, env=dict(env, DB_PREPARE_THRESHOLD="off"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert default == ["True", "5"]
    assert off == ["True", "None"]


def test_the_pending_keys_index_has_no_pending_list_on_any_partition():
    made = audit.partitions_ensure(months_ahead=1, today=datetime.date(2031, 5, 1))  # made after the migration
    assert any("billing_sync_event" in name for name in made), made
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT c.relname, c.reloptions FROM pg_class c
            WHERE c.oid = 'event_pending_keys_idx'::regclass
               OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'event_pending_keys_idx'::regclass)""")
        rows = cursor.fetchall()
    assert len(rows) >= 3  # the partitioned index and its partitions' indexes
    assert all(options and "fastupdate=off" in options for _, options in rows), rows
