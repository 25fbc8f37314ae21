"""The export's columns and the product's names for them: the column mapping (`--columns`).

The product names invoice columns as the UCI "Online Retail" export does (`CANONICAL`), plus
`Sales` for a line's total value when an export has no unit price. A shop's export names them
its own way (order_id, customer_id, created_at, ...): a mapping `CANONICAL=SOURCE,...` says which
of its columns is which. The names of UCI's newer "Online Retail II" export (Invoice, Price,
Customer ID) are recognised without one.

The least a run needs is a customer, a date, and a value: `Sales`, or `Quantity` and
`UnitPrice`. Without `InvoiceNo` each line is one order; without `StockCode` and `Description`
there are no products, and the stages that need them are skipped.

Pure: names in, names out. `resolve` is called by every reader before it decides how to read a
column (ids as text), so a mapped column is read as what it stands for.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

from customer_segments.tasks.errors import InputError

CANONICAL = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
SALES = "Sales"
NAMES = (*CANONICAL, SALES)
ID_COLUMNS = ("InvoiceNo", "StockCode", "CustomerID")
TEXT_COLUMNS = ("Description", "Country")
NUMBER_COLUMNS = ("Quantity", "UnitPrice", SALES)
PRODUCT_COLUMNS = ("StockCode", "Description")
REQUIRED = ("CustomerID", "InvoiceDate")
# UCI's "Online Retail II" export (2009-2011, the same shop) names three columns differently.
ONLINE_RETAIL_II = {"Invoice": "InvoiceNo", "Price": "UnitPrice", "Customer ID": "CustomerID"}

STAGE = "ingest"


def parse_mapping(text: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """`CustomerID=customer_id,InvoiceDate=date` (or a mapping already) as {canonical: source}.

    Source names may contain spaces (`CustomerID=Customer ID`); a comma or `=` inside a name is
    not supported. A name the product does not know is an error naming the closest one.
    """
    if text is None or text == "" or text == {}:
        return None
    if isinstance(text, Mapping):
        pairs = [(str(k).strip(), str(v).strip()) for k, v in text.items()]
    else:
        pairs = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise ValueError(f"--columns takes CANONICAL=SOURCE pairs separated by commas; {part.strip()!r} "
                                 f"has no '=' (e.g. --columns CustomerID=customer_id,InvoiceDate=created_at)")
            canonical, _, source = part.partition("=")
            pairs.append((canonical.strip(), source.strip()))
    mapping: dict[str, str] = {}
    for canonical, source in pairs:
        if canonical not in NAMES:
            close = difflib.get_close_matches(canonical, NAMES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ValueError(f"--columns: {canonical!r} is not a column name of the product; the names are "
                             f"{', '.join(NAMES)}{hint}")
        if not source:
            raise ValueError(f"--columns: {canonical}= names no column of the file")
        if canonical in mapping and mapping[canonical] != source:
            raise ValueError(f"--columns maps {canonical} twice ({mapping[canonical]!r} and {source!r})")
        mapping[canonical] = source
    return mapping or None


def mapping_text(mapping: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in (mapping or {}).items())


def resolve(header: Iterable[object], mapping: Mapping[str, str] | None, source: object) -> dict[object, str]:
    """Which canonical name each column of a file stands for: {file column: canonical name}.

    The mapping first, then columns already named as the product names them, then the Online
    Retail II names for those still missing. Columns that stand for nothing are carried along
    under their own names (the quality summary warns about them). InputError, naming the file's
    columns, when the mapping names a column the file lacks or maps two names to one column.
    """
    header = list(header)
    names = [str(c).strip() if isinstance(c, str) else c for c in header]
    by_name = {name: column for name, column in zip(names, header)}
    mapping = dict(mapping or {})
    found = ", ".join(repr(str(n)) for n in names[:15]) + (", ..." if len(names) > 15 else "")
    resolved: dict[object, str] = {}
    for canonical, wanted in mapping.items():
        column = by_name.get(wanted)
        if column is None:
            close = difflib.get_close_matches(wanted, [str(n) for n in names], n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(source, STAGE, canonical,
                             f"--columns maps {canonical} to {wanted!r}, which the file does not have{hint}; "
                             f"the file has columns {found}")
        if column in resolved:
            raise InputError(source, STAGE, canonical,
                             f"--columns maps both {resolved[column]} and {canonical} to the file's column "
                             f"{wanted!r}; each column can stand for one name only")
        resolved[column] = canonical
    for name, column in by_name.items():
        if column in resolved or name not in NAMES:
            continue
        if name in mapping:  # e.g. the file has CustomerID but --columns says another column is it
            raise InputError(source, STAGE, name,
                             f"the file has a column {name} and --columns maps {name} to {mapping[name]!r} too; "
                             f"rename one of them or leave {name} out of --columns")
        resolved[column] = name
    taken = set(resolved.values())
    for alias, canonical in ONLINE_RETAIL_II.items():
        column = by_name.get(alias)
        if column is not None and column not in resolved and canonical not in taken:
            resolved[column] = canonical
            taken.add(canonical)
    return resolved


def renamed_aliases(resolved: Mapping[object, str], mapping: Mapping[str, str] | None) -> dict[str, str]:
    """The Online Retail II names read as the product's ({file column: canonical}), for the summary."""
    mapped = set((mapping or {}).values())
    return {str(c): n for c, n in resolved.items() if str(c) in ONLINE_RETAIL_II and str(c) not in mapped
            and ONLINE_RETAIL_II[str(c)] == n}


def check_minimal(present: Iterable[str], header: Iterable[object], source: object) -> None:
    """InputError unless the columns hold a customer, a date and a value, saying which mapping would help."""
    present = set(present)
    missing = [c for c in REQUIRED if c not in present]
    if SALES not in present and not {"Quantity", "UnitPrice"} <= present:
        partly = [c for c in ("Quantity", "UnitPrice") if c in present]
        missing += [c for c in ("Quantity", "UnitPrice") if c not in present] if partly else [SALES]
    if not missing:
        return
    header = [str(c) for c in header]
    unused = [c for c in header if c not in present]
    hints = [f"{name}={close}" for name in missing if (close := _closest_column(name, unused)) is not None]
    found = ", ".join(repr(c) for c in header[:15]) + (", ..." if len(header) > 15 else "")
    advice = (f"; if the file names them otherwise, map them, e.g. --columns {','.join(hints)}" if hints else
              "; map the file's columns to them with --columns CANONICAL=SOURCE,...")
    raise InputError(source, STAGE, missing[0],
                     f"required column{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found "
                     f"(a run needs {', '.join(REQUIRED)} and either Sales, a line's value, or Quantity and "
                     f"UnitPrice); the file has columns {found}{advice}")


# Words a shop system uses for each name, for the "which mapping would help" hint.
_HINTS = {
    "InvoiceNo": ("invoice", "order", "order_id", "orderid", "order_number", "receipt", "transaction"),
    "StockCode": ("sku", "product", "product_id", "item", "item_id", "article", "stock"),
    "Description": ("description", "product_name", "item_name", "name", "title"),
    "Quantity": ("qty", "quantity", "units", "number", "count", "amount_units"),
    "InvoiceDate": ("date", "created_at", "order_date", "timestamp", "time", "datetime", "purchased_at"),
    "UnitPrice": ("price", "unit_price", "unitprice", "item_price"),
    "CustomerID": ("customer", "customer_id", "customerid", "client", "user_id", "buyer"),
    "Country": ("country", "country_code", "nation"),
    SALES: ("sales", "total", "value", "revenue", "amount", "dollar_value", "order_total", "line_total"),
}


def _closest_column(name: str, columns: list[str]) -> str | None:
    simple = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in columns}
    for word in (name.lower(), *_HINTS.get(name, ())):
        key = re.sub(r"[^a-z0-9]", "", word)
        if key in simple:
            return simple[key]
        partial = [original for k, original in simple.items() if key and (key in k or k in key) and len(k) > 1]
        if partial:
            return partial[0]
    return None
