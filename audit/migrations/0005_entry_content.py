"""Audit entries keep the exact bytes they were hashed from; the columns become a checked projection of them.

Before: `entry_hash` was the SHA-256 of a canonical JSON re-built from the columns, with `before`/`after`
stored as jsonb (which re-formats JSON), so every verification had to re-parse and re-encode each entry.
After: `content` holds that canonical JSON verbatim, `before`/`after` are read from it, and the
constraint `audit_entry_fields_match` makes the database refuse any row whose indexed columns (`at`,
`actor`, `action`, `object_type`, `object_id`, `event_id`, `correlation_id`) differ from its content.

Existing entries get the content their hash was computed from (the same canonical JSON the old verifier
rebuilt), so their hashes, the chain and the signed digests are untouched, and `audit_verify` after
this migration proves the conversion lost nothing. Filling the new column is the one UPDATE the
append-only guard lets through, for the length of this migration only.
"""
import datetime
import json

from django.db import migrations, models

BATCH = 5000


def _canonical(value) -> str:
    # audit.services.canonical_json at the time of this migration, copied so later changes there cannot
    # change what this migration writes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fill_content(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER audit_entry_append_only")
        last = 0
        while True:
            cursor.execute("""SELECT id, at, actor, action, object_type, object_id, event_id::text, before::text,
                                     after::text, correlation_id FROM audit_auditentry
                              WHERE id > %s ORDER BY id LIMIT %s""", [last, BATCH])
            rows = cursor.fetchall()
            if not rows:
                break
            ids, texts = [], []
            for entry_id, at, actor, action, object_type, object_id, event_id, before, after, correlation_id in rows:
                ids.append(entry_id)
                texts.append(_canonical({
                    "at": at.astimezone(datetime.timezone.utc).isoformat(), "actor": actor, "action": action,
                    "object_type": object_type, "object_id": object_id, "event_id": event_id,
                    "before": None if before is None else json.loads(before),
                    "after": None if after is None else json.loads(after), "correlation_id": correlation_id}))
            cursor.execute("""UPDATE audit_auditentry e SET content = v.content
                              FROM unnest(%s::bigint[], %s::text[]) AS v(id, content) WHERE e.id = v.id""",
                           [ids, texts])
            last = ids[-1]
        cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER audit_entry_append_only")


def fill_before_after(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("ALTER TABLE audit_auditentry DISABLE TRIGGER audit_entry_append_only")
        cursor.execute("UPDATE audit_auditentry SET before = content::jsonb -> 'before', after = content::jsonb -> 'after'")
        cursor.execute("UPDATE audit_auditentry SET before = NULL WHERE before = 'null'::jsonb")
        cursor.execute("UPDATE audit_auditentry SET after = NULL WHERE after = 'null'::jsonb")
        cursor.execute("ALTER TABLE audit_auditentry ENABLE TRIGGER audit_entry_append_only")


# One parse of `content` per row (jsonb_populate_record into a fixed row type), compared with IS NOT
# DISTINCT FROM so that a NULL on either side is a difference, not a pass. `audit.services` checks at
# verification time that this constraint and the row type are still exactly these.
FIELDS_SQL = """
CREATE TYPE audit_entry_fields AS (at timestamptz, actor text, action text, object_type text, object_id text,
                                   event_id uuid, correlation_id text);
ALTER TABLE audit_auditentry ADD CONSTRAINT audit_entry_fields_match CHECK (
    ROW(at, actor, action, object_type, object_id, event_id, correlation_id)::audit_entry_fields
    IS NOT DISTINCT FROM jsonb_populate_record(NULL::audit_entry_fields, content::jsonb));
"""
FIELDS_REVERSE = """
ALTER TABLE audit_auditentry DROP CONSTRAINT IF EXISTS audit_entry_fields_match;
DROP TYPE IF EXISTS audit_entry_fields;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_digest_append_only")]

    operations = [
        migrations.AddField("auditentry", "content", models.TextField(default=""), preserve_default=False),
        migrations.RunPython(fill_content, fill_before_after),
        migrations.RemoveField("auditentry", "before"),
        migrations.RemoveField("auditentry", "after"),
        migrations.RunSQL(FIELDS_SQL, FIELDS_REVERSE),
    ]
