"""Report downloads: a table (a header and rows of plain values) as a CSV streamed row by row, or as an XLSX
workbook written by openpyxl in write-only mode to a temporary file that the response streams, so neither
holds a large report in memory. CSV cells are text as the API writes them (money at the currency's
minor-unit digits, ISO dates); XLSX cells are numbers and dates a spreadsheet computes with, money formatted
with the currency's digits."""
from __future__ import annotations

import csv
import datetime
import tempfile
from collections.abc import Iterable
from decimal import ROUND_HALF_UP, Decimal

from django.http import FileResponse, StreamingHttpResponse
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.styles import Font

from config.money import minor_units, quantum

XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class _Echo:
    """A file-like object whose write returns what it was given: csv.writer then hands out each line."""

    def write(self, value):
        return value


def _texts(currency: str | None):
    """A cell's CSV text: money as `config.money.fmt` writes it (the quantum looked up once per file)."""
    step = quantum(currency) if currency else None

    def text(value) -> str:
        if value is None:
            return ""
        if isinstance(value, Decimal):
            return str(value.quantize(step, rounding=ROUND_HALF_UP)) if step is not None else format(value, "f")
        if isinstance(value, datetime.date):
            return value.isoformat()
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    return text


def csv_chunks(header: list[str], rows: Iterable[list], *, currency: str | None) -> Iterable[str]:
    """The CSV lines of a table, one at a time."""
    writer = csv.writer(_Echo(), lineterminator="\n")
    text = _texts(currency)
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([text(value) for value in row])


def csv_response(filename: str, header: list[str], rows: Iterable[list], *, currency: str | None):
    return stream_response(csv_chunks(header, rows, currency=currency), filename, "text/csv; charset=utf-8")


def stream_response(chunks: Iterable[str], filename: str, content_type: str) -> StreamingHttpResponse:
    """Text chunks as a streamed download named `filename`."""
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _money_format(currency: str | None) -> str:
    digits = minor_units(currency) if currency else 2
    return "#,##0" + ("." + "0" * digits if digits else "")


def write_xlsx(out, sheets: list[tuple[str, list[str], Iterable[list]]], *, currency: str | None) -> None:
    """Write `sheets` ((title, header, rows), in order) as one workbook into the binary file `out`."""
    workbook = Workbook(write_only=True)
    bold = Font(bold=True)
    money = _money_format(currency)
    for title, header, rows in sheets:
        sheet = workbook.create_sheet(title=title[:31])
        cells = []
        for name in header:
            cell = WriteOnlyCell(sheet, value=name)
            cell.font = bold
            cells.append(cell)
        sheet.append(cells)
        for row in rows:
            out_row = []
            for value in row:
                if isinstance(value, Decimal):
                    cell = WriteOnlyCell(sheet, value=value)
                    cell.number_format = money
                    out_row.append(cell)
                elif isinstance(value, datetime.date):
                    cell = WriteOnlyCell(sheet, value=value)
                    cell.number_format = "yyyy-mm-dd"
                    out_row.append(cell)
                else:
                    out_row.append(value)
            sheet.append(out_row)
    workbook.save(out)


def xlsx_response(filename: str, sheets: list[tuple[str, list[str], Iterable[list]]], *, currency: str | None):
    # On disk, not in memory: the file has no name (deleted on close) and FileResponse closes it once sent.
    handle = tempfile.TemporaryFile(prefix="tieout-report-")
    try:
        write_xlsx(handle, sheets, currency=currency)
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return FileResponse(handle, as_attachment=True, filename=filename, content_type=XLSX_TYPE)
