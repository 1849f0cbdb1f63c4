"""No write on an audited model bypasses its audit entry: a scan of every project module.

Walks every project .py file (not tests, migrations or bench/) and finds each queryset `.update(...)`,
`.delete()`, `bulk_create(...)` and `bulk_update(...)`, and each raw-SQL UPDATE / DELETE / TRUNCATE
of an audited table. Every such write on an audited model (or on a receiver the scan cannot resolve)
must be allow-listed below with its reason, and the reason is checked: the function writes the audit
entry itself (`audit.record` / `record_many` in its body), or the named caller in the same module
does, or the model is exempt for a stated reason. Every model of the project's apps must be classed as
audited or operational, so a new model cannot slip through unclassified; and an allow-list entry that
no longer matches any write fails too, so the list cannot rot.
"""
import ast
import re
from pathlib import Path

from django.apps import apps

ROOT = Path(__file__).resolve().parent.parent.parent
PROJECT_APPS = ("audit", "billing_sync", "ledger", "exceptions_queue")
METHODS = {"update", "delete", "bulk_create", "bulk_update", "insert_all"}  # insert_all: config.deferred's
QUERYSET_METHODS = {"filter", "exclude", "all", "select_for_update", "order_by", "values", "only", "defer", "using"}

# Models whose changes are audit-logged (beside every model django-simple-history tracks).
AUDITED = {"Event", "Receipt", "CanonicalChange", "PaymentAllocation", "Journal", "JournalLine", "ExceptionRecord", "ExceptionComment",
           "Approval", "ApprovalDecision", "ApiToken", "EntityAccess", "AuditEntry", "AuditSeal", "AuditDigest",
           "AuditCheck", "User", "Group", "TOTPDevice", "ReconciliationRun", "PartitionArchive"}
# Work queues and their bookkeeping: their effects (journals posted, callbacks delivered) are audited, the
# queue rows themselves are not business data.
OPERATIONAL = {"Outbox": "the outbox relay's hand-off marker", "PostingAttempt": "one ERP call's log row",
               "CallbackDelivery": "a status callback's delivery state", "ErpBatch": "a batch document's state",
               "ErpBatchLine": "a batch document's netted line", "DocumentSequence": "a number allocator",
               "ReconciliationMark": "an object's last reconciliation status, derived from the audited run (its "
                                     "reconciliation.finished entry counts the marks it changed) and breaks",
               "ItemBalance": "a posted journal's running balance per invoice or payment, kept by a database trigger "
                              "from the audited posting (no other write is allowed)",
               "AuditEntryKey": "an audit entry's id and time, written by a trigger with the entry itself",
               "EventKey": "an event's identity, written by a trigger with the audited event row",
               "ReceiptKey": "a receipt's id and month, written by a trigger with the audited receipt row"}

SAME_FUNCTION = "audited in the same function"
# (path, function) -> (why this bulk or queryset write is fine, how it is audited: SAME_FUNCTION,
# "caller:<function in the same module>", or "exempt")
ALLOWED = {
    ("billing_sync/management/commands/load_demo.py", "_backdate"): (
        "demo data only (the command refuses production settings): rows' own times moved back to when the demo "
        "history says they happened; the audit log keeps the real times of the load", "exempt"),
    ("billing_sync/management/commands/load_demo.py", "_work_the_queue"): (
        "demo data only: the comments' times moved back beside their exceptions'", "exempt"),
    ("billing_sync/tokens.py", "token_touch"): (
        "ApiToken.last_used_at, at most once a minute: a usage statistic, not a change of the token", "exempt"),
    ("audit/services/sealing.py", "chain_seal"): (
        "AuditSeal.bulk_create is the chain itself, appended by its one sealer: it is the audit record", "exempt"),
    ("billing_sync/documents.py", "_write_lines"): (
        "InvoiceLine: a queryset delete sends post_delete per row, so simple-history writes each deletion; "
        "the amendment's audit entry is written by invoice_amended", "caller:invoice_amended"),
    ("billing_sync/services/ingest.py", "event_receive"): (
        "Receipt.outcome of a replay or conflict, set in the request that inserted the receipt: the receipt row "
        "is itself the evidence of what arrived (no business state changes)", "exempt"),
    ("billing_sync/services/status.py", "events_refresh_status"): ("Event statuses set-based", SAME_FUNCTION),
    ("ledger/services/journals.py", "journal_create"): (
        "a Journal and its JournalLine rows (config.deferred.insert_all) with the journal's journal.created entry",
        SAME_FUNCTION),
    ("ledger/services/batches.py", "erp_batches_form"): ("Journals handed to a batch, journal.batched per journal",
                                                 SAME_FUNCTION),
    ("ledger/services/batches.py", "_mark_batch_journals_posted"): ("Journals posted by a batch document, journal.posted "
                                                            "per journal", SAME_FUNCTION),
    ("ledger/services/posting.py", "_claim"): ("journal.attempts is PostingAttempt (operational)", "exempt"),
    ("ledger/services/posting.py", "journals_claim"): (
        "a drain's chunk of journals claimed at once (status posting, lease, attempt count), journal.posting per "
        "journal", SAME_FUNCTION),
    ("ledger/services/posting.py", "journals_settle_posted"): (
        "a drain's group of journals the ERP acknowledged, journal.posted per journal with its correlation id",
        SAME_FUNCTION),
    ("ledger/services/posting.py", "journals_post_in_database"): (
        "the built-in ledger's journals of a chunk posted at once, journal.posted per journal with its correlation "
        "id", SAME_FUNCTION),
    ("ledger/services/outcomes.py", "_fail"): ("journal.attempts is PostingAttempt (operational)", "exempt"),
    ("ledger/services/batches.py", "_batch_close"): ("row is an ErpBatchLine (operational)", "exempt"),
    ("billing_sync/services/reconciliation.py", "_apply"): (
        "ReconciliationBreak.last_seen_run of the open breaks a run found again, set-based; a break whose figures "
        "changed, opened or resolved is written one by one with its own audit entry", SAME_FUNCTION),
    ("portal/auth_services.py", "user_2fa_enrol"): ("unconfirmed TOTP devices", SAME_FUNCTION),
    ("portal/auth_services.py", "user_2fa_reset"): ("a user's TOTP devices", SAME_FUNCTION),
}


def _project_files():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "tests", "bench", "staticfiles", "node_modules"} or "migrations" in rel.parts:
            continue
        yield rel


def _receiver(node) -> tuple[str | None, bool]:
    """(model name if the chain starts at `Model.objects`, whether the receiver is a queryset chain)."""
    queryset = False
    while True:
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) and node.func.attr in QUERYSET_METHODS:
                queryset = True
            node = node.func
        elif isinstance(node, ast.Attribute):
            if node.attr in ("objects", "_base_manager", "_default_manager"):
                if isinstance(node.value, ast.Name):
                    return node.value.id, True
                queryset = True
            node = node.value
        else:
            return None, queryset


def _writes_audit(function: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("record", "record_many")
               for n in ast.walk(function))


def _audited_tables() -> dict[str, str]:
    return {m._meta.db_table: m.__name__ for m in apps.get_models() if m.__name__ in _audited_models()}


def _audited_models() -> set[str]:
    tracked = {m.__name__ for m in apps.get_models() if hasattr(m, "history") and not m.__name__.startswith("Historical")}
    return AUDITED | tracked


def _scan(root: Path = ROOT, files=None):
    tables = _audited_tables()
    table_pattern = re.compile(r"\b(UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?)\s+(\w+)", re.IGNORECASE)
    found = []
    functions = {}
    for rel in files if files is not None else _project_files():
        tree = ast.parse((root / rel).read_text(encoding="utf-8"), filename=str(rel))
        stack: list[ast.AST] = []

        class Visitor(ast.NodeVisitor):
            def visit_FunctionDef(self, node):
                functions[(str(rel), node.name)] = node
                stack.append(node)
                self.generic_visit(node)
                stack.pop()

            visit_AsyncFunctionDef = visit_FunctionDef

            def visit_Call(self, node):
                if isinstance(node.func, ast.Attribute) and node.func.attr in METHODS:
                    model, queryset = _receiver(node.func.value)
                    bare_delete = node.func.attr == "delete" and not node.args and not node.keywords
                    if queryset or bare_delete or node.func.attr.startswith("bulk_") or node.func.attr == "insert_all":
                        found.append((str(rel), stack[-1].name if stack else "<module>", node.lineno,
                                      node.func.attr, model, ast.unparse(node.func.value)[:80]))
                self.generic_visit(node)

            def visit_Constant(self, node):
                if isinstance(node.value, str):
                    for match in table_pattern.finditer(node.value):
                        if match.group(2) in tables:
                            found.append((str(rel), stack[-1].name if stack else "<module>", node.lineno,
                                          "SQL " + match.group(1).upper(), tables[match.group(2)], match.group(0)))

        Visitor().visit(tree)
    return found, functions


def test_every_model_is_classed_audited_or_operational():
    audited = _audited_models()
    ours = {m.__name__ for m in apps.get_models() if m._meta.app_label in PROJECT_APPS
            and not m.__name__.startswith("Historical")}
    unclassified = ours - audited - set(OPERATIONAL)
    assert not unclassified, f"class these models in AUDITED or OPERATIONAL: {sorted(unclassified)}"
    assert not audited & set(OPERATIONAL)


def test_no_bulk_or_queryset_write_bypasses_the_audit_log():
    found, functions = _scan()
    assert found, "the scan found nothing at all: it is broken"
    audited = _audited_models()
    problems, used = [], set()
    for path, function, line, method, model, receiver in found:
        if model in OPERATIONAL or (model is not None and model not in audited):
            continue  # a work-queue row, or a model that is not ours and not audited (checked above)
        key = (path, function)
        where = f"{path}:{line} {function}(): {receiver}.{method}"
        if key not in ALLOWED:
            problems.append(f"{where} writes {model or 'an unresolved receiver'} in bulk without an allow-list entry")
            continue
        used.add(key)
        _, how = ALLOWED[key]
        if how == SAME_FUNCTION and not _writes_audit(functions[key]):
            problems.append(f"{where}: allow-listed as audited in the same function, but it writes no audit entry")
        elif how.startswith("caller:"):
            caller = functions.get((path, how.split(":", 1)[1]))
            if caller is None or not _writes_audit(caller) or not any(
                    isinstance(n, ast.Call) and getattr(n.func, "id", None) == function for n in ast.walk(caller)):
                problems.append(f"{where}: allow-listed as audited by {how}, which does not call it and audit")
    assert not problems, "\n".join(problems)
    stale = set(ALLOWED) - used
    assert not stale, f"allow-list entries that no longer match a write (remove them): {sorted(stale)}"


def test_the_scan_sees_a_bypass(tmp_path):
    """The scan itself can fail: a module with a bare queryset update of an audited model is reported."""
    (tmp_path / "probe.py").write_text("from ledger.models import Journal\n\n\ndef sneaky(ids):\n"
                                       "    Journal.objects.filter(pk__in=ids).update(status='posted')\n"
                                       "    journal.lines.all().delete()\n"
                                       "    SQL = 'UPDATE ledger_journal SET status = 1'\n")
    found, _ = _scan(tmp_path, [Path("probe.py")])
    assert [(f[1], f[3], f[4]) for f in found] == [("sneaky", "update", "Journal"), ("sneaky", "delete", None),
                                                   ("sneaky", "SQL UPDATE", "Journal")]
