"""Digests and verification runs are append-only too: the database refuses UPDATE, DELETE and TRUNCATE."""
from django.db import migrations

SQL = """
CREATE TRIGGER audit_digest_append_only BEFORE UPDATE OR DELETE ON audit_auditdigest
    FOR EACH ROW EXECUTE FUNCTION tieout_refuse_change();
CREATE TRIGGER audit_digest_no_truncate BEFORE TRUNCATE ON audit_auditdigest
    FOR EACH STATEMENT EXECUTE FUNCTION tieout_refuse_change();
CREATE TRIGGER audit_check_append_only BEFORE UPDATE OR DELETE ON audit_auditcheck
    FOR EACH ROW EXECUTE FUNCTION tieout_refuse_change();
CREATE TRIGGER audit_check_no_truncate BEFORE TRUNCATE ON audit_auditcheck
    FOR EACH STATEMENT EXECUTE FUNCTION tieout_refuse_change();
"""

REVERSE = """
DROP TRIGGER IF EXISTS audit_digest_append_only ON audit_auditdigest;
DROP TRIGGER IF EXISTS audit_digest_no_truncate ON audit_auditdigest;
DROP TRIGGER IF EXISTS audit_check_append_only ON audit_auditcheck;
DROP TRIGGER IF EXISTS audit_check_no_truncate ON audit_auditcheck;
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_digests")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
