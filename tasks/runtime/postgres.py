"""PostgreSQL as a place invoice lines come from and customer tables go to.

A source or target is a URL: `postgresql://USER@HOST:PORT/DB?table=SCHEMA.TABLE`, or for a
source `?query=SELECT ...` (URL-encoded). Connections go through ADBC's PostgreSQL driver
(libpq), which reads and writes Arrow tables with PostgreSQL's binary COPY protocol.

Credentials come from where libpq looks: `PGPASSWORD`, `~/.pgpass`, or the URL. A password given
in the URL is taken out of it here, handed to libpq through the environment of this process
only, and never written anywhere: `safe_url` is what manifests, logs, flow parameters and error
messages see, and `scrub` removes the password from any text a driver produces.

Table and column names are identifiers, never pasted into SQL as text: each is checked against
`IDENTIFIER` and then double-quoted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from customer_segments.tasks.errors import InputError, UsageError

SCHEMES = ("postgresql://", "postgres://")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
PASSWORD_ENV = "PGPASSWORD"


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


@dataclass(frozen=True)
class Location:
    """A parsed URL: where to connect (without password) and what to read or write."""

    connect: str                 # libpq URI without password and without our own query parameters
    schema: str | None
    table: str | None
    query: str | None

    @property
    def safe(self) -> str:
        """The URL as it may be shown and recorded (no password)."""
        what = (f"?table={self.schema + '.' if self.schema else ''}{self.table}" if self.table
                else f"?query={quote(self.query or '', safe='')}" if self.query else "")
        return self.connect + what

    @property
    def relation(self) -> str:
        """The table as SQL, each part quoted."""
        return ".".join(quote_identifier(p) for p in (self.schema, self.table) if p)

    @property
    def table_name(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else str(self.table)


def parse(url: str, role: str, *, default_table: str | None = None) -> tuple[Location, str | None]:
    """(location, password) from a URL; UsageError in words for anything malformed.

    `role` names what the URL is for in messages ("input", "export target").
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname and not parts.path.strip("/"):
        raise UsageError(role, f"{safe_url(url)} is not a PostgreSQL URL; write postgresql://USER@HOST:PORT/DB?table=SCHEMA.TABLE")
    password = unquote(parts.password) if parts.password else None
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    options = parse_qs(parts.query, keep_blank_values=True)
    table = (options.pop("table", [None]) or [None])[-1]
    query = (options.pop("query", [None]) or [None])[-1]
    # Other parameters (sslmode=require, ...) are libpq's and stay in the connection URI.
    rest = "&".join(f"{k}={quote(v, safe='')}" for k, values in options.items() for v in values)
    connect = urlunsplit(("postgresql", netloc, parts.path, rest, ""))
    if table is not None and query is not None:
        raise UsageError(role, f"{connect}: give either ?table= or ?query=, not both")
    if table is None and query is None:
        table = default_table
    if query is not None:
        query = query.strip().rstrip(";").strip()
        if not query:
            raise UsageError(role, f"{connect}: ?query= is empty")
        return Location(connect, None, None, query), password
    if table is None:
        raise UsageError(role, f"{connect}: name the table (?table=SCHEMA.TABLE) or the query (?query=SELECT ...)")
    names = table.split(".")
    if len(names) > 2 or not all(IDENTIFIER.match(n) for n in names):
        raise UsageError(role, f"?table={table!r} is not a table name: a table is named NAME or SCHEMA.NAME, each "
                               "a letter or underscore followed by letters, digits, underscores or $ (nothing "
                               "else, so that no text can be taken for SQL)")
    schema, name = (names[0], names[1]) if len(names) == 2 else (None, names[0])
    return Location(connect, schema, name, None), password


def safe_url(url: str) -> str:
    """The URL with any password taken out (for messages, manifests and flow parameters)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an unreadable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}@{netloc}" if user else netloc, parts.path, parts.query, parts.fragment))


def take_password(url: str) -> str:
    """The URL without its password, which goes to this process's environment for libpq.

    As in libpq, a password in the URL wins over PGPASSWORD.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    os.environ[PASSWORD_ENV] = unquote(parts.password)
    _SECRETS.add(unquote(parts.password))
    return safe_url(url)


_SECRETS: set[str] = set()


def scrub(text: str) -> str:
    """Text without any password this process knows of (from the URL or PGPASSWORD)."""
    for secret in {*_SECRETS, os.environ.get(PASSWORD_ENV) or ""}:
        if len(secret) >= 3:
            text = text.replace(secret, "********")
    return text


def quote_identifier(name: str) -> str:
    if not IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not an identifier")
    return '"' + name + '"'


def quote_column(name: str) -> str:
    """A column name as SQL: any name an export may use (spaces included), double-quoted."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{name!r} is not a column name")
    return '"' + name.replace('"', '""') + '"'


def connect(location: Location, role: str):
    """An ADBC connection; a paragraph (no password) when the server cannot be reached or refuses."""
    import adbc_driver_postgresql.dbapi as pg

    try:
        return pg.connect(location.connect)
    except Exception as exc:  # the driver's own error types; the user needs one paragraph
        raise connection_error(location, role, exc) from None


def connection_error(location: Location, role: str, exc: Exception) -> Exception:
    text = scrub(str(exc)).strip().splitlines()
    detail = next((line.strip() for line in text if "FATAL" in line or "failed" in line or "error" in line.lower()),
                  text[0] if text else type(exc).__name__)
    if "password" in detail.lower() or "authentication" in detail.lower():
        advice = (f"check the user and the password (given in {PASSWORD_ENV}, ~/.pgpass or the URL; it is never "
                  "shown)")
    elif "does not exist" in detail:
        advice = "check the database name"
    else:
        advice = "check that the server is running and the host and port are right"
    problem = f"cannot connect to {location.connect}: {detail.rstrip('.')}; {advice}"
    if role == "input":
        return InputError(location.safe, "ingest", None, problem)
    return UsageError(role, problem)
