"""Reading an import of items: NDJSON (one JSON object a line) or CSV (a header row naming the
fields), in batches of rows, each row validated as item creation validates it (``ItemCreate``).
A row that fails is an error with its line number (the first line is 1; in CSV the header is
line 1), and is skipped: the rest are imported.

Plain blocking file reads: the job runs each batch's read in a thread (jobs.py). A reader can
start after any line a batch ended on, which is how a re-delivered job resumes.
"""

import csv
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from .schemas import ItemCreate, JobError

ImportFormat = Literal["ndjson", "csv"]
# The media types an import accepts, and the format of each.
MEDIA_TYPES: dict[str, ImportFormat] = {"application/x-ndjson": "ndjson", "text/csv": "csv"}
FIELDS = tuple(ItemCreate.model_fields)
REQUIRED_FIELDS = tuple(
    name for name, info in ItemCreate.model_fields.items() if info.is_required()
)


def csv_header_problem(line: str) -> str | None:
    """What is wrong with a CSV import's header line; None when nothing is."""
    header = next(csv.reader([line]), [])
    unknown = [name for name in header if name not in FIELDS]
    if unknown:
        return f"unknown column {unknown[0]!r} in the CSV header: the columns are {list(FIELDS)}"
    missing = [name for name in REQUIRED_FIELDS if name not in header]
    if missing:
        return f"the CSV header lacks the column {missing[0]!r}: it names the columns of each row"
    if len(set(header)) != len(header):
        return "the CSV header names a column twice"
    return None


def _describe(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'row'}: {problem['msg']}"
        for problem in error.errors(include_url=False)
    )


@dataclass
class Batch:
    """Valid rows (dicts of ItemCreate's fields) and the errors of the others, from the lines
    after the previous batch up to line ``end`` (the line count consumed so far)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[JobError] = field(default_factory=list)
    end: int = 0


class ImportReader:
    """The rows of an import file, ``read_batch`` by ``read_batch``, from after line
    ``start``."""

    def __init__(self, path: str, import_format: str, *, start: int = 0) -> None:
        # utf-8-sig: a byte order mark (spreadsheets write one) is not part of the first field.
        self._file = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed by close()
        self.line = 0
        self._records: Iterator[tuple[int, Any]]
        if import_format == "csv":
            self._records = self._csv_records()
        else:
            self._records = self._ndjson_records()
        # Lines up to ``start`` were imported by an earlier run: read past them.
        while self.line < start and next(self._records, None) is not None:
            pass

    def _ndjson_records(self) -> Iterator[tuple[int, Any]]:
        for text in self._file:
            self.line += 1
            if text.strip():
                yield self.line, text

    def _csv_records(self) -> Iterator[tuple[int, Any]]:
        reader = csv.reader(self._file)
        header = next(reader, None)
        self.line = reader.line_num
        if header is None:
            return
        problem = csv_header_problem(",".join(header))
        if problem is not None:
            raise ValueError(problem)
        for record in reader:
            first_line, self.line = self.line + 1, reader.line_num
            if not any(record):
                continue
            if len(record) != len(header):
                yield (
                    first_line,
                    ValueError(f"{len(record)} fields where the header has {len(header)}"),
                )
                continue
            # An empty field is a field left out: quantity takes its default, name is missing.
            yield (
                first_line,
                {name: value for name, value in zip(header, record, strict=True) if value},
            )

    def read_batch(self, size: int) -> Batch:
        """The next ``size`` rows at most (fewer at the end of the file)."""
        batch = Batch()
        for line, record in itertools.islice(self._records, size):
            try:
                if isinstance(record, ValueError):
                    raise record
                if isinstance(record, str):
                    item = ItemCreate.model_validate_json(record)
                else:
                    item = ItemCreate.model_validate(record)
            except ValidationError as exc:
                batch.errors.append(JobError(line=line, message=_describe(exc)))
            except ValueError as exc:
                batch.errors.append(JobError(line=line, message=str(exc)))
            else:
                batch.rows.append(item.model_dump())
        batch.end = self.line
        return batch

    def close(self) -> None:
        self._file.close()


def first_line(data: bytes) -> str:
    """The first line of ``data`` (UTF-8, a byte order mark dropped)."""
    return io.StringIO(data.decode("utf-8-sig", errors="replace")).readline().rstrip("\r\n")
