"""Web pages: manual adjustments (find an invoice, raise a credit memo or write-off, write a journal), for
finance operations, controllers and admins only (others get 403 on GET and POST). Thin forms hand input to
`billing_sync.adjustments` (through the events pipeline) and `ledger.services.manual_journal_create`, the
services the API calls, and show their refusals inline per field with stable codes; a successful submit goes
to the waiting approval (or the posted result when the policy needs none)."""
import datetime
import uuid

from django import forms
from django.contrib import messages
from django.forms import formset_factory
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import path, reverse

from billing_sync import adjustments
from billing_sync import selectors as billing_selectors
from config.errors import TieoutError
from exceptions_queue import services as queue
from ledger import selectors as ledger_selectors
from ledger import services as ledger
from config.money import fmt, minor_units
from portal.selectors import approvals as approval_selectors
from portal.web.access import WORKERS, page

SEARCH_LIMIT = 50
DEFAULT_LINES = 4


# --------------------------------------------------------------------------------------------- helpers
def _invoice_or_404(request, pk):
    invoice = billing_selectors.invoice_for(request.user, pk)
    if invoice is None:
        raise Http404("No such invoice.")
    return invoice


def _summary(invoice) -> dict:
    c = invoice.currency
    return {"pk": invoice.pk, "number": invoice.number, "invoice_id": invoice.invoice_id,
            "source_system": invoice.source_system, "entity": invoice.entity.code, "currency": c,
            "customer": invoice.customer.name, "customer_id": invoice.customer.customer_id,
            "status": invoice.status, "settlement": invoice.settlement, "settlement_label": invoice.settlement_label,
            "issue_date": invoice.issue_date, "due_date": invoice.due_date,
            "total": fmt(invoice.total, c), "open_amount": fmt(invoice.open_amount, c),
            "creditable": fmt(adjustments.creditable_room(invoice), c),
            "write_off_room": fmt(adjustments.write_off_room(invoice), c)}


def _apply_errors(form, exc: TieoutError, field_map: dict | None = None) -> None:
    """Put a service's refusal on the form: each named field inline, anything else on the form itself."""
    field_map = field_map or {}
    placed = False
    for error in exc.errors or []:
        name = field_map.get(error.get("field"), error.get("field"))
        if name in form.fields:
            form.add_error(name, error["message"])
            placed = True
    if not placed:
        form.add_error(None, exc.detail)


# --------------------------------------------------------------------------------------------- search
@page(read=WORKERS, write=WORKERS)
def index(request):
    q = (request.GET.get("q") or "").strip()
    rows = [_summary(i) for i in billing_selectors.invoices_search(request.user, q)[:SEARCH_LIMIT]]
    return render(request, "adjustments/index.html", {"q": q, "rows": rows, "limit": SEARCH_LIMIT})


@page(read=WORKERS, write=WORKERS)
def invoice_page(request, pk):
    invoice = _invoice_or_404(request, pk)
    details = approval_selectors.invoice_view(invoice)
    return render(request, "adjustments/invoice.html", {"invoice": _summary(invoice), "details": details})


# --------------------------------------------------------------------------------------------- credit memo, write-off
class _OneSubmit(forms.Form):
    # A token minted when the form is shown: submitting the same form twice (a double click, a reload)
    # is one request, answered with the first outcome.
    request_key = forms.UUIDField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial.setdefault("request_key", uuid.uuid4())

    @property
    def key(self) -> str | None:
        value = self.cleaned_data.get("request_key")
        return str(value) if value else None


class WriteOffForm(_OneSubmit):
    amount = forms.CharField(label="Amount to write off", max_length=40,
                             widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}))
    reason = forms.CharField(label="Reason", max_length=adjustments.MAX_REASON, widget=forms.Textarea)


class CreditMemoForm(_OneSubmit):
    amount = forms.CharField(label="Amount to credit (before tax)", max_length=40,
                             widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}))
    tax_amount = forms.CharField(label="Tax to credit (optional)", max_length=40, required=False,
                                 widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off"}))
    tax_jurisdiction = forms.ChoiceField(label="Tax jurisdiction", required=False, choices=())
    reason = forms.CharField(label="Reason", max_length=adjustments.MAX_REASON, widget=forms.Textarea)

    def __init__(self, *args, jurisdictions=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tax_jurisdiction"].choices = [("", "—")] + [(j, j) for j in jurisdictions]
        if len(jurisdictions) == 1:
            self.fields["tax_jurisdiction"].initial = jurisdictions[0]


def _after_raise(request, invoice, result) -> object:
    label = "Credit memo" if result.kind == "credit_note" else "Write-off"
    if result.approval is not None:
        messages.success(request, f"{label} {result.document_id} raised: it waits for "
                                  f"{result.approval.required_approvals} approval"
                                  f"{'s' if result.approval.required_approvals > 1 else ''} by someone else.")
        return redirect(reverse("web-approval", kwargs={"pk": result.approval.pk}))
    if result.exception is not None:
        messages.error(request, f"{label} {result.document_id} could not be booked: {result.exception.message} "
                                f"(code: {result.exception.code}); it waits in the exception queue.")
    else:
        messages.success(request, f"{label} {result.document_id} booked: no approval needed under the policy; "
                                  "its journal posts now.")
    return redirect(reverse("web-adjustment-invoice", kwargs={"pk": invoice.pk}))


def _raise_view(request, pk, *, kind: str):
    invoice = _invoice_or_404(request, pk)
    jurisdictions = adjustments.invoice_tax_jurisdictions(invoice) if kind == "credit_note" else []
    make = (lambda data=None: CreditMemoForm(data, jurisdictions=jurisdictions)) if kind == "credit_note" else (
        lambda data=None: WriteOffForm(data))
    form = make(request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                if kind == "credit_note":
                    result = adjustments.manual_credit_memo_raise(
                        invoice=invoice, amount=data["amount"], tax_amount=data.get("tax_amount"),
                        tax_jurisdiction=data.get("tax_jurisdiction"), reason=data["reason"], user=request.user,
                        remote_addr=request.META.get("REMOTE_ADDR"), request_key=form.key)
                else:
                    result = adjustments.manual_write_off_raise(
                        invoice=invoice, amount=data["amount"], reason=data["reason"], user=request.user,
                        remote_addr=request.META.get("REMOTE_ADDR"), request_key=form.key)
            except TieoutError as exc:
                _apply_errors(form, exc)
                form.refusal = {"code": exc.code, "detail": exc.detail}
                status = exc.status if exc.status in (403, 404) else 422
            else:
                return _after_raise(request, invoice, result)
        else:
            status = 422
    invoice.refresh_from_db()
    return render(request, "adjustments/raise.html", {
        "invoice": _summary(invoice), "form": form, "kind": kind,
        "title": "Raise a credit memo" if kind == "credit_note" else "Raise a write-off",
        "refusal": getattr(form, "refusal", None), "jurisdictions": jurisdictions}, status=status)


@page(read=WORKERS, write=WORKERS)
def credit_memo(request, pk):
    return _raise_view(request, pk, kind="credit_note")


@page(read=WORKERS, write=WORKERS)
def write_off(request, pk):
    return _raise_view(request, pk, kind="write_off")


# --------------------------------------------------------------------------------------------- manual journal
class JournalHeaderForm(_OneSubmit):
    accounting_date = forms.DateField(label="Accounting date", widget=forms.DateInput(attrs={"type": "date"}),
                                      input_formats=["%Y-%m-%d"])
    description = forms.CharField(label="Description", max_length=300,
                                  help_text="What the journal is for; the approver reads it.",
                                  widget=forms.TextInput(attrs={"size": 60}))


class JournalLineForm(forms.Form):
    account = forms.ChoiceField(label="Account", required=False, choices=())
    debit = forms.CharField(label="Debit", required=False, max_length=40,
                            widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off", "size": 12}))
    credit = forms.CharField(label="Credit", required=False, max_length=40,
                             widget=forms.TextInput(attrs={"inputmode": "decimal", "autocomplete": "off", "size": 12}))
    memo = forms.CharField(label="Memo", required=False, max_length=300)

    def __init__(self, *args, account_choices=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["account"].choices = [("", "— choose —")] + list(account_choices)


LineFormSet = formset_factory(JournalLineForm, extra=0, max_num=ledger.MANUAL_JOURNAL_MAX_LINES,
                              absolute_max=ledger.MANUAL_JOURNAL_MAX_LINES)


def _line_formset(entity, data=None, *, lines: int = DEFAULT_LINES):
    choices = [(a.code, f"{a.code} {a.name}") for a in ledger_selectors.accounts_active(entity)]
    kwargs = {"prefix": "lines", "form_kwargs": {"account_choices": choices}}
    if data is not None:
        return LineFormSet(data, **kwargs)
    return LineFormSet(initial=[{} for _ in range(lines)], **kwargs)


def _journal_error_fields(exc: TieoutError, header, formset) -> None:
    """Map the service's `lines[2].debit`-style fields onto the header form and the line forms."""
    placed = False
    for error in exc.errors or []:
        field = error.get("field", "")
        if field.startswith("lines[") and "]." in field:
            index, name = field[len("lines["):].split("].", 1)
            if index.isdigit() and int(index) < len(formset.forms) and name in formset.forms[int(index)].fields:
                formset.forms[int(index)].add_error(name, error["message"])
                placed = True
                continue
        if field in header.fields:
            header.add_error(field, error["message"])
            placed = True
        else:
            header.add_error(None, error["message"])
            placed = True
    if not placed:
        header.add_error(None, exc.detail)


@page(read=WORKERS, write=WORKERS)
def manual_journal(request):
    entities = list(ledger_selectors.entities_for(request.user))
    source = request.POST if request.method == "POST" else request.GET
    code = (source.get("entity") or "").strip()
    if not code and len(entities) == 1:
        code = entities[0].code
    entity = next((e for e in entities if e.code == code), None)
    if entity is None:  # first step: which entity (the accounts to choose from depend on it)
        return render(request, "adjustments/journal_entity.html",
                      {"entities": entities, "unknown": code}, status=404 if code else 200)
    status = 200
    refusal = None
    if request.method == "POST":
        header = JournalHeaderForm(request.POST)
        formset = _line_formset(entity, request.POST)
        if "add_line" in request.POST:  # without JavaScript: the server adds the row
            data = request.POST.copy()
            data["lines-TOTAL_FORMS"] = str(min(int(data.get("lines-TOTAL_FORMS") or 0) + 1,
                                                ledger.MANUAL_JOURNAL_MAX_LINES))
            header = JournalHeaderForm(data)
            formset = _line_formset(entity, data)
            return render(request, "adjustments/journal.html", _journal_context(entity, entities, header, formset,
                                                                              None, quiet=True))
        header_ok, lines_ok = header.is_valid(), formset.is_valid()
        if header_ok and lines_ok:
            lines = [(f.cleaned_data.get("account", ""), f.cleaned_data.get("debit", ""),
                      f.cleaned_data.get("credit", ""), f.cleaned_data.get("memo", "")) for f in formset.forms]
            try:
                journal = queue.manual_journal_create(
                    entity=entity, accounting_date=header.cleaned_data["accounting_date"],
                    description=header.cleaned_data["description"], lines=lines, user=request.user,
                    request_key=header.key)
            except TieoutError as exc:
                _journal_error_fields(exc, header, formset)
                refusal = {"code": exc.code, "detail": exc.detail}
                status = exc.status if exc.status in (403, 404) else 422
            else:
                approval = getattr(journal, "approval", None)
                if approval is not None:
                    messages.success(request, f"Manual journal {journal.document_id} raised: it waits for "
                                              f"{approval.required_approvals} approval"
                                              f"{'s' if approval.required_approvals > 1 else ''} by someone else.")
                    return redirect(reverse("web-approval", kwargs={"pk": approval.pk}))
                messages.success(request, f"Manual journal {journal.document_id} created: no approval needed "
                                          "under the policy; it posts now.")
                return redirect(reverse("web-manual-journal-result", kwargs={"pk": journal.pk}))
        else:
            status = 422
    else:
        header = JournalHeaderForm(initial={"accounting_date": datetime.date.today()})
        formset = _line_formset(entity)
    return render(request, "adjustments/journal.html",
                  _journal_context(entity, entities, header, formset, refusal), status=status)


def _journal_context(entity, entities, header, formset, refusal, *, quiet=False) -> dict:
    return {"entity": entity, "entities": entities, "header": header, "formset": formset, "refusal": refusal,
            "quiet": quiet, "max_lines": ledger.MANUAL_JOURNAL_MAX_LINES, "decimals": minor_units(entity.currency)}


@page(read=WORKERS, write=WORKERS)
def manual_journal_result(request, pk):
    journal = ledger_selectors.manual_journal_for(request.user, pk)
    if journal is None:
        raise Http404("No such journal.")
    approval = getattr(journal, "approval", None)
    if approval is not None:
        return redirect(reverse("web-approval", kwargs={"pk": approval.pk}))
    return render(request, "adjustments/journal_result.html",
                  {"journal": approval_selectors.journal_view(journal), "document_id": journal.document_id,
                   "entity": journal.entity})


urlpatterns = [
    path("", index, name="web-adjustments"),
    path("invoices/<int:pk>/", invoice_page, name="web-adjustment-invoice"),
    path("invoices/<int:pk>/credit-memo/", credit_memo, name="web-adjustment-credit-memo"),
    path("invoices/<int:pk>/write-off/", write_off, name="web-adjustment-write-off"),
    path("journal/", manual_journal, name="web-manual-journal"),
    path("journal/<uuid:pk>/", manual_journal_result, name="web-manual-journal-result"),
]
