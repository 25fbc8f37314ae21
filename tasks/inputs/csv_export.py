"""Read invoice-line CSV exports as other tools write them, or say plainly why not.

A CSV file does not say how it was written. Excel in much of Europe separates fields with `;`,
writes prices with a decimal comma (`2,55`) and dates day-first (`01/12/2010 08:26`); Excel on
Windows saves "CSV" as Windows-1252 and "CSV UTF-8" with a byte-order mark; other tools use tabs,
`|` or a different column order. Handed such a file, a plain `read_csv` either fails with a
parser's internals ("C error: Expected 1 fields in line 113, saw 2") or, worse, succeeds with
wrong values. This module settles what the file itself settles (separator from the header,
encoding from the bytes, decimal comma from the prices, date order from the dates) and raises one
`InputError` paragraph, naming the line, value and the option to rerun with, for the rest.
"""

from __future__ import annotations

import codecs
import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from customer_segments.tasks.errors import InputError
from customer_segments.tasks.inputs import columns as column_names

STAGE = "ingest"

# Read as text whatever they look like: ids keep leading zeros ("085123"), dates stay text for
# parse_invoice_dates (an all-digit date column would otherwise become integers). By the names the
# columns stand for (a mapped column is read as what it stands for).
TEXT_COLUMNS = (*column_names.ID_COLUMNS, *column_names.TEXT_COLUMNS, "InvoiceDate")
NUMBER_COLUMNS = column_names.NUMBER_COLUMNS

SEPARATORS = (",", ";", "\t", "|")  # in order of preference when two split the header equally well
SNIFF_BYTES = 64 * 1024
SCAN_BYTES = 8 * 1024 * 1024  # chunk size when locating a bad byte or line (error paths only)

# Numbers in a decimal-comma file: 12, 2,55, 1.234,56, 1.234 (dots group thousands by three).
_COMMA_NUMBER = r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?"
_DECIMAL_COMMA = r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+),\d+"
_DECIMAL_POINT = r"[+-]?\d*\.\d+"
_THOUSANDS_ONLY = r"[+-]?\d{1,3}(?:\.\d{3})+"  # 1.234: thousands in one convention, decimals in the other

# A date's shape with digits replaced by 9: "01/12/2010 08:26" -> "99/99/9999 99:99".
_SLASH_DATE_SHAPE = re.compile(
    r"(?P<d1>9{1,2})(?P<sep>[/.-])(?P<d2>9{1,2})(?P=sep)(?P<year>99|9999)"
    r"(?:(?P<t>[ T]+)9{1,2}:99(?P<sec>:99)?(?P<ampm>\s*[AaPp][Mm])?)?"
)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_csv_export(path: Path, encoding: str | None = None, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """The file's table with its header as found (names stripped), ids as text, numbers as numbers.

    The separator comes from the header line, a decimal comma from the UnitPrice (or Sales)
    values, the encoding is UTF-8 (with or without byte-order mark) unless `encoding` is given.
    `columns` is the column mapping: which of the file's columns stands for which name (see
    columns.py). Whatever cannot be settled from the file raises InputError; required columns
    are checked later, by name, in the ingest stage.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
            if b"\n" not in head and len(head) < size:  # a header longer than the sniff window
                head += f.readline()
    except OSError as exc:
        raise InputError(path, STAGE, None, f"the file cannot be opened ({exc.strerror or exc})") from None
    if size == 0:
        raise InputError(path, STAGE, None, "the file is empty (0 bytes)")

    codec = _codec(path, encoding, head)
    try:
        text = codecs.getincrementaldecoder(codec)("strict").decode(head, final=len(head) >= size)
    except UnicodeDecodeError:
        raise _decode_error(path, codec, given=encoding is not None) from None
    lines = text.split("\n")
    if len(head) < size:
        lines.pop()  # possibly cut in the middle

    # Excel honours a first line "sep=;" and so does this reader; blank lines before the header
    # are skipped (as pandas does).
    hint = re.fullmatch(r"sep=(.)", lines[0].rstrip("\r")) if lines else None
    start = 1 if hint else 0
    header_index = next((i for i in range(start, len(lines)) if lines[i].strip()), None)
    if header_index is None:
        raise InputError(path, STAGE, None, "the file holds no table (no header row)")
    header = lines[header_index].rstrip("\r").lstrip("\ufeff")
    known = frozenset(column_names.NAMES) | set(column_names.ONLINE_RETAIL_II) | set((columns or {}).values())
    sep = hint.group(1) if hint else _separator(path, header, known)

    options = dict(
        sep=sep, skiprows=header_index, encoding=codec, encoding_errors="strict",
        engine="c", low_memory=False, index_col=False,  # no first column silently made an index
    )
    expected = None
    try:
        # The header as pandas names it ("Unnamed: 8" for a blank name), to key dtypes by.
        names = pd.read_csv(path, nrows=0, **options).columns
        expected = len(names)
        stripped = {name: _clean_name(name) for name in names}
        meaning = _meanings(list(stripped.values()), columns, path)
        text_columns = TEXT_COLUMNS if sep == "," else TEXT_COLUMNS + NUMBER_COLUMNS
        # Text columns are read as arrow strings and then cast to pandas' "str": identical
        # result, but several times faster than dtype="str", which goes through Python objects.
        as_text = {raw for raw, name in stripped.items() if meaning.get(name) in text_columns}
        dtype = {raw: pd.ArrowDtype(pa.large_string()) for raw in as_text}
        _check_field_counts(path, sep, codec, header_index, expected)
        df = pd.read_csv(path, dtype=dtype, **options)
    except pd.errors.EmptyDataError:
        raise InputError(path, STAGE, None, "the file holds no table (no header row)") from None
    except UnicodeDecodeError:
        raise _decode_error(path, codec, given=encoding is not None) from None
    except pd.errors.ParserError as exc:
        raise _parser_error(path, exc, sep, codec, header_index, expected) from None
    for raw in as_text:
        df[raw] = df[raw].astype("str")
    df.columns = [stripped[c] for c in df.columns]

    if sep != "," and len(df):
        _read_numbers(df, path, meaning)
    return df


def _meanings(header: list, columns: dict[str, str] | None, path: Path) -> dict:
    """{file column: the name it stands for}; a mapping error waits for the ingest stage's check."""
    try:
        return column_names.resolve(header, columns, path)
    except InputError:
        return column_names.resolve(header, None, path)


def _codec(path: Path, encoding: str | None, head: bytes) -> str:
    if encoding is None:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return "utf-16"  # Excel's "Unicode Text"; the byte-order mark leaves no doubt
        return "utf-8-sig"
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise InputError(
            path, STAGE, None,
            f"'{encoding}' is not an encoding Python knows; common ones are utf-8, cp1252 and latin-1",
        ) from None
    # utf-8-sig reads plain UTF-8 too and keeps a byte-order mark out of the first column name.
    return "utf-8-sig" if name == "utf-8" else name


def _clean_name(name) -> object:
    if not isinstance(name, str):
        return name
    # "ï»¿" is a UTF-8 byte-order mark read as cp1252/latin-1.
    return name.strip().removeprefix("\ufeff").removeprefix("ï»¿").strip()


def _separator(path: Path, header: str, known: frozenset[str] = frozenset(column_names.NAMES)) -> str:
    """The candidate splitting the header into the most known names (then most fields)."""
    def score(sep: str) -> tuple[int, int, int]:
        fields = _split(header, sep)
        return (sum(n in known for n in fields), len(fields), -SEPARATORS.index(sep))

    best = max(SEPARATORS, key=score)
    if score(best)[1] > 1:
        # Too few required names is for the ingest stage to report, naming the missing columns.
        return best

    problem = (
        f"the header has one column ('{_shorten(header, 80)}'); no separator among ',', ';', "
        "tab and '|' splits it into the invoice columns"
    )
    # Another character that does split it tells the user what the file really is.
    others = {c for c in header if not (c.isalnum() or c in "_\"'")}
    found = max(
        ((sum(n in known for n in _split(header, c)), c) for c in others), default=(0, ""),
    )
    if found[0] >= 2:
        problem += f"; the file seems to use '{found[1]}' as separator"
    raise InputError(path, STAGE, None, problem)


def _split(line: str, sep: str) -> list[str]:
    """A line's fields, honouring CSV quotes, stripped of blanks and a byte-order mark."""
    fields = next(csv.reader([line], delimiter=sep), [])
    return [_clean_name(f) for f in fields]


# --------------------------------------------------------------------------------------------
# Ragged lines
# --------------------------------------------------------------------------------------------


def _check_field_counts(path: Path, sep: str, codec: str, header_index: int, expected: int) -> None:
    """Raise InputError for the first data line with more or fewer fields than the header.

    pandas' C parser reports lines with too many fields but silently pads short ones with
    missing values, so a line cut short would pass unnoticed. pyarrow's parser checks every
    row's field count; parsing without converting any column costs a fraction of the read.
    """
    import pyarrow.csv as pcsv

    bad = []

    def on_invalid(row) -> str:
        if not row.text.strip():
            return "skip"  # a whitespace-only line, which pandas skips as blank
        bad.append(row)
        return "error"

    # pyarrow reads UTF-8 natively and transcodes anything else (cp1252, UTF-16) first, so
    # that a bad row's text, handed to Python, decodes.
    utf8 = codec in ("utf-8-sig", "utf-8")
    try:
        pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(
                # Own column names: the header is not decoded, empty or repeated names are fine.
                column_names=[f"f{i}" for i in range(expected)],
                skip_rows=header_index + 1,
                use_threads=False,  # so that the first bad row found is the first in the file
                encoding="utf8" if utf8 else codec,
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=sep, newlines_in_values=True, invalid_row_handler=on_invalid,
            ),
            convert_options=pcsv.ConvertOptions(include_columns=[]),
        )
    except (pa.ArrowException, UnicodeError):
        # Anything else, such as bytes that are not UTF-8, is for the main read to report.
        pass
    if not bad:
        return
    row = bad[0]
    first_line = row.text.split("\n")[0].rstrip("\r")
    # Line numbers count b"\n" in the raw bytes, which is right for ASCII-compatible encodings.
    line_no = None
    if _ascii_compatible(codec):
        line_no = _locate_line(path, first_line.encode("utf-8" if utf8 else codec))
    if line_no is None:  # approximate: pyarrow counts rows, not blank lines or quoted line breaks
        line_no = header_index + (row.number or 0)
    raise _ragged_error(path, line_no, row.actual_columns, expected, row.text, sep)


def _ascii_compatible(codec: str) -> bool:
    probe = 'ab;,|\t"\r\n'
    try:  # (utf-8-sig would prepend its byte-order mark)
        return probe.encode("utf-8" if codec == "utf-8-sig" else codec) == probe.encode("ascii")
    except UnicodeError:
        return False


def _locate_line(path: Path, needle: bytes) -> int | None:
    """1-based number of the first line that is exactly `needle`, scanning bytes in chunks."""
    if not needle:
        return None
    lines_before, carry = 0, b""
    with path.open("rb") as f:
        while chunk := f.read(SCAN_BYTES):
            data, eof = carry + chunk, len(chunk) < SCAN_BYTES
            pos = data.find(b"\n" + needle)
            while pos != -1:
                after = data[pos + 1 + len(needle): pos + 2 + len(needle)]
                if after in (b"\r", b"\n") or (not after and eof):
                    return lines_before + data.count(b"\n", 0, pos) + 2
                pos = data.find(b"\n" + needle, pos + 1)
            # Keep the tail that may hold the start of a match cut by the chunk boundary.
            keep = min(len(data), len(needle) + 2)
            lines_before += data.count(b"\n", 0, len(data) - keep)
            carry = data[len(data) - keep:]
    return None


def _read_line(path: Path, line_no: int, codec: str) -> str:
    """Physical line `line_no` (1-based) of the file, decoded leniently (error paths only)."""
    from itertools import islice

    with path.open("r", encoding=codec, errors="replace", newline="") as f:
        return next(islice(f, line_no - 1, None), "").rstrip("\r\n")


def _parser_error(path: Path, exc: Exception, sep: str, codec: str, header_index: int,
                  expected: int | None) -> InputError:
    """pandas' ParserError in the user's words; pyarrow has caught most ragged lines before."""
    message = str(exc)
    if m := re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message):
        line_no, found = int(m.group(2)), int(m.group(3))
        text = _read_line(path, line_no, codec)
        return _ragged_error(path, line_no, found, expected or int(m.group(1)), text, sep)
    if m := re.search(r"EOF inside string starting at row (\d+)", message):
        # Rows count from 0 at the header and do not count quoted line breaks, hence "near".
        return InputError(
            path, STAGE, None,
            f"a double quote (\") opens a field near line {header_index + int(m.group(1)) + 1} "
            "and is never closed, so the rest of the file runs into one field",
        )
    return InputError(path, STAGE, None, f"the file cannot be parsed as CSV with separator {_sep_name(sep)}")


def _ragged_error(path: Path, line_no: int, found: int, expected: int, text: str, sep: str) -> InputError:
    line = text.rstrip("\r\n")
    if found == expected + 1 and line.endswith(sep):
        cause = f"likely a separator {_sep_name(sep)} at the end of the line"
    elif found > expected and found >= 2 * expected - 1:
        cause = "likely two lines joined into one (a missing line break)"
    elif found > expected:
        cause = (f"likely a Description containing the separator {_sep_name(sep)} without quotes; "
                 "such values need double quotes")
    elif "\n" in line:
        cause = "likely a double quote (\") that opens a field and is never closed"
    else:
        cause = "likely a line cut short, e.g. by a line break inside a Description without quotes"
    return InputError(
        path, STAGE, None,
        f"line {line_no} has {found} field{'s' if found != 1 else ''} but the header has {expected} "
        f"('{_shorten(line.replace(chr(10), ' '), 100)}'); {cause}",
    )


def _sep_name(sep: str) -> str:
    return "tab" if sep == "\t" else f"'{sep}'"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _decode_error(path: Path, codec: str, given: bool) -> InputError:
    """Find the first byte `codec` cannot decode and say where it is and what to do."""
    offset, lines_before, previous = 0, 0, b""
    with path.open("rb") as f:
        if codec == "utf-8-sig":
            # Plain UTF-8 past the byte-order mark, so that error offsets are offsets in the file.
            codec = "utf-8"
            offset = 3 if f.read(3) == codecs.BOM_UTF8 else 0
            f.seek(offset)
        decoder = codecs.getincrementaldecoder(codec)("strict")
        while chunk := f.read(SCAN_BYTES):
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
            try:
                decoder.decode(chunk, final=len(chunk) < SCAN_BYTES)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                data = previous + chunk
                at = bad - (offset - len(previous))
                break
            lines_before += chunk.count(b"\n")
            offset += len(chunk)
            previous = chunk[-4096:]
        else:  # the main reader failed, yet every byte decodes: report without a location
            return InputError(path, STAGE, None, f"the file cannot be decoded as {codec}")

    line_start = data.rfind(b"\n", 0, at) + 1
    line_end = data.find(b"\n", at)
    line = data[line_start: None if line_end == -1 else line_end].rstrip(b"\r")
    line_no = lines_before - previous.count(b"\n") + data.count(b"\n", 0, at) + 1
    byte = data[at]
    where = (f"byte 0x{byte:02X} on line {line_no}, position {at - line_start + 1} "
             f"('{_shorten(line.decode(codec, errors='replace'), 80)}')")
    codec_name = "UTF-8" if codec == "utf-8" else codec

    try:
        data.decode("cp1252")
        cp1252 = f"'{bytes([byte]).decode('cp1252')}'"
    except UnicodeDecodeError:
        cp1252 = None
    if given or codec != "utf-8":  # an --encoding that does not fit, or a UTF-16 file gone wrong
        example = "cp1252" if cp1252 and codec != "cp1252" else "latin-1"
        return InputError(
            path, STAGE, None,
            f"{where} cannot be decoded as {codec_name}; rerun with the --encoding the file was "
            f"saved in, e.g. --encoding {example}",
        )
    if cp1252:
        advice = (f"the file seems to be Windows-1252 (Excel's \"CSV\" on Windows), where that byte "
                  f"is {cp1252}; rerun with --encoding cp1252")
    else:
        advice = "rerun with --encoding latin-1, or with the encoding the file was saved in"
    return InputError(path, STAGE, None, f"the file is not UTF-8: {where} is not valid UTF-8; {advice}")


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _read_numbers(df: pd.DataFrame, path: Path, meaning: dict) -> None:
    """Convert Quantity, UnitPrice and Sales, read as text, in place: decimal comma or point.

    Only for files not separated by ',' (a ',' file cannot have unquoted decimal commas). The
    whole column decides, not a sample: a "2.55" after a million "2,55" would otherwise be read
    as 255 by a thousands-separator-aware parser. The prices (or else the line values) decide
    for the file.
    """
    column_of = {name: column for column, name in meaning.items() if column in df.columns}
    decider = next((n for n in ("UnitPrice", column_names.SALES) if n in column_of and _is_text(df[column_of[n]])), None)
    comma = _decimal_comma(df[column_of[decider]], path) if decider else False
    for name in NUMBER_COLUMNS:
        column = column_of.get(name)
        if column is not None and _is_text(df[column]):
            col = df[column]
            use_comma = comma or (name != decider and _decimal_comma(col, path, strict=False))
            df[column] = _to_numbers(col, use_comma)


def _is_text(col: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(col) or col.dtype == object


def _decimal_comma(col: pd.Series, path: Path, strict: bool = True) -> bool:
    """Whether the column writes decimals with a comma; raises if it mixes both styles."""
    text = col.str.strip()
    has_comma = text.str.contains(",", regex=False, na=False)
    if not has_comma.any():
        return False
    comma_values = text[has_comma]
    comma_values = comma_values[comma_values.str.fullmatch(_DECIMAL_COMMA)]
    if comma_values.empty:
        return False
    # Point-only values (not "1.234", which a decimal-comma file writes for a thousand).
    dotted = text[text.str.contains(".", regex=False, na=False) & ~has_comma]
    points = dotted[dotted.str.fullmatch(_DECIMAL_POINT) & ~dotted.str.fullmatch(_THOUSANDS_ONLY)]
    if points.empty:
        return True
    if not strict:
        return False
    raise InputError(
        path, STAGE, col.name,
        f"the values mix decimal commas and decimal points, e.g. {_sample(comma_values, 3)} "
        f"and {_sample(points, 3)}; export the file again with one decimal separator",
    )


def _to_numbers(col: pd.Series, comma: bool) -> pd.Series:
    """Text to int64 (all whole, none missing) or float64, as pandas' parser would infer.

    Values that are not numbers stay as they are (the column becomes object) so that the
    ingest stage reports exactly those.
    """
    import pyarrow.compute as pc

    text = col.str.strip()
    if comma:
        if text.str.contains(".", regex=False, na=False).any():
            text = text.str.replace(".", "", regex=False)  # thousands, checked by _COMMA_NUMBER below
        text = text.str.replace(",", ".", regex=False)
    # pyarrow's casts are several times faster than pd.to_numeric on text; the slow path below
    # only runs when some value is not a plain number.
    arrow = pa.array(text)
    # int64 only where pandas' parser would infer it: no missing value and no decimal point.
    whole = arrow.null_count == 0 and not text.str.contains(".", regex=False).any()
    for kind in (pa.int64(), pa.float64()) if whole else (pa.float64(),):
        try:
            numbers = pc.cast(arrow, kind).to_pandas()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if not comma or _all_match(col, _COMMA_NUMBER):
            return numbers.set_axis(col.index).rename(col.name)
        break

    numbers = pd.to_numeric(text, errors="coerce")
    valid = numbers.notna()
    if comma:
        valid &= col.str.strip().str.fullmatch(_COMMA_NUMBER).fillna(False).astype(bool)
    if valid.sum() == col.notna().sum():
        return numbers
    return numbers.astype(object).where(valid, col)


def _all_match(col: pd.Series, pattern: str) -> bool:
    """Whether every non-missing value with a '.' (the only risky ones) matches `pattern`."""
    text = col.str.strip()
    dotted = text[text.str.contains(".", regex=False, na=False)]
    return bool(dotted.str.fullmatch(pattern).all())


def _sample(values: pd.Series, n: int = 5) -> str:
    return ", ".join(repr(v) for v in values.drop_duplicates().head(n).tolist())


# --------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------


def parse_invoice_dates(values: pd.Series, source, date_format: str | None = None) -> pd.Series:
    """Date text as read from CSV -> datetime64[ns] (no time zone); missing values stay NaT.

    With `date_format`, exactly that strftime format. Without, ISO dates and anything else
    pandas reads unambiguously; slash or dot dates (01/12/2010 08:26) are read day-first or
    month-first, whichever reads every value, and InputError asks for --date-format when both
    do and disagree.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        return _naive_ns(values)
    text = values.astype("str").str.strip()
    text = text.mask(text.eq(""))  # blank is missing, not a bad date
    if date_format is not None:
        return _with_format(text, source, date_format).set_axis(values.index).rename(values.name)

    # Invoices share timestamps: parse each distinct text once, then spread back by code.
    codes, uniques = pd.factorize(text)
    unique = pd.Series(uniques, dtype="str")
    parsed = pd.Series(pd.NaT, index=unique.index, dtype="datetime64[ns]")

    # Slash or dot dates get their pair of formats from their shape; a file has a handful.
    shapes = unique.str.replace(r"\d", "9", regex=True)
    pairs = {shape: _slash_formats(shape) for shape in shapes.unique()}
    day_formats = shapes.map({shape: pair[0] for shape, pair in pairs.items() if pair})
    month_format = {pair[0]: pair[1] for pair in pairs.values() if pair}
    slashed = day_formats.notna()
    note = ""
    if slashed.any():
        parsed[slashed], note = _day_or_month_first(
            unique[slashed], day_formats[slashed], month_format, source,
        )
    if (~slashed).any():
        parsed[~slashed] = _parse_other(unique[~slashed])

    bad = parsed.isna()
    if bad.any():
        rows = int(np.bincount(codes[codes >= 0], minlength=len(unique))[bad.to_numpy()].sum())
        raise InputError(
            source, STAGE, "InvoiceDate",
            f"{rows:,} value(s) are not dates{note}, e.g. {_sample(unique[bad])}",
        )
    # Code -1 (missing) takes the last element, the NaT appended for it.
    spread = np.append(parsed.to_numpy(), np.datetime64("NaT", "ns"))[codes]
    return pd.Series(spread, index=values.index, name=values.name)


def _with_format(text: pd.Series, source, date_format: str) -> pd.Series:
    try:
        parsed = pd.to_datetime(text, format=date_format, errors="coerce")
    except ValueError as exc:
        raise InputError(
            source, STAGE, "InvoiceDate", f"--date-format '{date_format}' is not a valid format ({exc})",
        ) from None
    bad = parsed.isna() & text.notna()
    if bad.any():
        raise InputError(
            source, STAGE, "InvoiceDate",
            f"{int(bad.sum()):,} value(s) do not match --date-format '{date_format}', "
            f"e.g. {_sample(text[bad])}",
        )
    return _naive_ns(parsed)


def _slash_formats(shape: str) -> tuple[str, str] | None:
    """(day-first, month-first) strftime formats for a date shape, or None if not d/m/y."""
    m = _SLASH_DATE_SHAPE.fullmatch(shape)
    if not m:
        return None
    sep, year = m["sep"], "%Y" if len(m["year"]) == 4 else "%y"
    time = ""
    if m["t"] is not None:
        hour = "%I" if m["ampm"] else "%H"
        time = f"{m['t']}{hour}:%M" + (":%S" if m["sec"] else "")
        if m["ampm"]:
            time += m["ampm"][:-2] + "%p"
    return f"%d{sep}%m{sep}{year}{time}", f"%m{sep}%d{sep}{year}{time}"


def _day_or_month_first(unique: pd.Series, day_formats: pd.Series, month_format: dict,
                        source) -> tuple[pd.Series, str]:
    """Slash/dot dates read the one way that reads them all; a real ambiguity is the user's call.

    Returns the timestamps and, when neither way reads all, a note for the error message.
    """
    day = _parse_by_format(unique, day_formats)
    if day.notna().all():
        if (day.dt.day > 12).any():
            return day, ""  # read month-first, that day would be a month
        # Every day is at most 12, so month-first reads every value too, with day and month
        # swapped: the same timestamps only where day equals month.
        differ = day.dt.day != day.dt.month
        if not differ.any():
            return day, ""
        i = differ.idxmax()
        d = day[i]
        m = d.replace(month=d.day, day=d.month)
        raise InputError(
            source, STAGE, "InvoiceDate",
            f"the dates can be read day-first or month-first ('{unique[i]}' is "
            f"{d.day} {d:%B} or {m.day} {m:%B}); rerun with --date-format '{day_formats[i]}' "
            f"or --date-format '{month_format[day_formats[i]]}'",
        )
    month = _parse_by_format(unique, day_formats.map(month_format))
    if month.notna().all():
        return month, ""
    # Neither reads all: report what the reading that fits most values leaves over.
    if month.notna().sum() > day.notna().sum():
        return month, " when read month-first like the others"
    return day, " when read day-first like the others" if day.notna().any() else ""


def _parse_by_format(unique: pd.Series, formats: pd.Series) -> pd.Series:
    parsed = pd.Series(pd.NaT, index=unique.index, dtype="datetime64[ns]")
    for fmt in formats.unique():
        sel = formats == fmt
        parsed[sel] = _naive_ns(pd.to_datetime(unique[sel], format=fmt, errors="coerce"))
    return parsed


def _parse_other(unique: pd.Series) -> pd.Series:
    """Anything but slash/dot dates: ISO 8601 first, then whatever pandas infers."""
    try:
        parsed = pd.to_datetime(unique, format="ISO8601", errors="coerce")
    except ValueError:  # mixed UTC offsets
        parsed = pd.to_datetime(unique, format="ISO8601", errors="coerce", utc=True)
    parsed = _naive_ns(parsed)
    rest = parsed.isna() & unique.notna()
    if rest.any():
        with warnings.catch_warnings():
            # Unparseable values are reported by the caller, with samples, as an InputError.
            warnings.simplefilter("ignore", UserWarning)
            try:
                other = pd.to_datetime(unique[rest], errors="coerce")
            except (ValueError, TypeError, OverflowError):
                other = pd.to_datetime(unique[rest], errors="coerce", format="mixed", utc=True)
        parsed[rest] = _naive_ns(other)
    return parsed


def _naive_ns(values: pd.Series) -> pd.Series:
    if getattr(values.dt, "tz", None) is not None:
        values = values.dt.tz_localize(None)
    return values.astype("datetime64[ns]")
