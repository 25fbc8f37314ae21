"""PostgreSQL, for real: a table or query as the input, and the customer table exported to a table.

A throwaway server of Debian's package (tests/support/postgres.py) with password authentication;
every command here gets the password from PGPASSWORD (or the URL), and every file, log, message
and Prefect record is searched for it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import pytest
from support import BIN, REAL_PARQUET, REPO, SAMPLE, last_json, real, run_cli
from support.postgres import PASSWORD

from customer_segments.tasks.runtime.storage import sha256_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shop(postgres_server):
    """The UCI data as a table, loaded in file order."""
    postgres_server.load_parquet(real(REAL_PARQUET), "public.online_retail")
    return postgres_server


def no_password_in(*places: Path | str) -> None:
    for place in places:
        if isinstance(place, Path) and place.is_dir():
            for path in place.rglob("*"):
                if path.is_file() and path.stat().st_size < 50_000_000:
                    assert PASSWORD.encode() not in path.read_bytes(), path
        else:
            assert PASSWORD not in str(place)


@pytest.fixture(scope="module")
def table_runs(prefect_server, shop, tmp_path_factory):
    """The UCI Parquet file and the same lines in PostgreSQL, run alike; then the table again."""
    artifacts = tmp_path_factory.mktemp("database")
    url = shop.url("?table=public.online_retail")
    runs = {}
    for name, source, env in (("parquet", str(real(REAL_PARQUET)), {}), ("table", url, shop.env()),
                              ("table again", url, shop.env())):
        done = run_cli("run", "--input", source, "--artifacts", str(artifacts), "--json", "--no-basket", env=env)
        assert done.returncode == 0, done.stderr
        runs[name] = done
    return artifacts, runs


@pytest.mark.real_data
def test_a_table_gives_the_files_outputs_from_clean_on_and_is_reused_unchanged(table_runs):
    artifacts, runs = table_runs
    parquet, table = (Path(last_json(runs[n].stdout)["run_dir"]) for n in ("parquet", "table"))
    compared = sorted(p.name for p in parquet.glob("*.parquet"))
    assert "clean_invoices.parquet" in compared and len(compared) > 20
    for name in compared:
        assert sha256_file(parquet / name) == sha256_file(table / name), name
    manifest = json.loads((table / "manifest.json").read_text())
    read = manifest["input"]
    assert read["path"].endswith("/shop?table=public.online_retail") and "segment@" in read["path"]
    assert read["query"] == ('SELECT * FROM "public"."online_retail" WHERE "InvoiceDate" < '
                             "TIMESTAMP '2011-12-01 00:00:00'")
    assert read["rows"] == 516_384  # the lines before December 2011
    snapshot = artifacts / read["snapshot"]
    assert sha256_file(snapshot) == read["sha256"]
    again = json.loads((Path(last_json(runs["table again"].stdout)["run_dir"]) / "manifest.json").read_text())
    assert {s["status"] for s in again["stages"].values()} == {"cached"}
    assert again["input"]["sha256"] == read["sha256"]


@pytest.mark.real_data
def test_a_row_added_to_the_table_recomputes(prefect_server, shop, table_runs, tmp_path):
    artifacts, runs = table_runs
    shop.sql('CREATE TABLE grown AS SELECT * FROM online_retail')
    shop.sql("""INSERT INTO grown VALUES ('999999', '85123A', 'WHITE HANGING HEART', 3, '2011-11-30 10:00',
                2.55, 17850, 'United Kingdom')""")
    done = run_cli("run", "--input", shop.url("?table=grown"), "--artifacts", str(artifacts), "--json", "--no-basket",
                   env=shop.env())
    assert done.returncode == 0, done.stderr
    manifest = json.loads((Path(last_json(done.stdout)["run_dir"]) / "manifest.json").read_text())
    first = json.loads((Path(last_json(runs["table"].stdout)["run_dir"]) / "manifest.json").read_text())
    assert manifest["input"]["rows"] == first["input"]["rows"] + 1
    assert manifest["input"]["sha256"] != first["input"]["sha256"]
    assert manifest["stages"]["clean"]["status"] == "completed" and manifest["stages"]["features"]["status"] == "completed"


@pytest.mark.real_data
def test_the_password_is_nowhere(prefect_server, shop, table_runs):
    artifacts, runs = table_runs
    no_password_in(artifacts, *(r.stdout + r.stderr for r in runs.values()))
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for done in runs.values():
            flow_run = client.read_flow_run(last_json(done.stdout)["flow_run_id"])
            no_password_in(json.dumps(flow_run.parameters))
            logs = client.read_logs(log_filter=None, limit=200)
            no_password_in(*(log.message for log in logs))


def test_a_query_is_an_input_and_a_password_in_the_url_is_taken_out(prefect_server, postgres_server, tmp_path):
    postgres_server.load_parquet(SAMPLE, "public.sample_lines")
    query = quote('SELECT * FROM sample_lines WHERE "Country" <> \'France\'', safe="")
    url = postgres_server.url(f"?query={query}", password=PASSWORD)
    done = run_cli("run", "--input", url, "--artifacts", str(tmp_path), "--json", "--no-basket", "--no-chaid",
                   env={"PGPASSWORD": ""})
    assert done.returncode == 0, done.stderr
    manifest = json.loads((Path(last_json(done.stdout)["run_dir"]) / "manifest.json").read_text())
    assert manifest["input"]["query"].startswith("SELECT * FROM (SELECT * FROM sample_lines WHERE")
    clean = pd.read_parquet(Path(manifest["run_dir"]) / "clean_invoices.parquet")
    assert len(clean) > 0 and "France" not in set(clean["Country"])
    no_password_in(tmp_path, done.stdout, done.stderr, json.dumps(manifest))


@pytest.mark.parametrize("case", ["injection", "missing table", "wrong password", "no server", "no rows",
                                  "not dates"])
def test_a_bad_database_input_is_one_paragraph_without_the_password(case, postgres_server, tmp_path):
    postgres_server.sql("CREATE TABLE IF NOT EXISTS texts AS SELECT 'x'::text AS \"CustomerID\", "
                        "'2011-01-01'::text AS \"InvoiceDate\", 1.0::float8 AS \"Sales\"")
    postgres_server.sql("CREATE TABLE IF NOT EXISTS texts_as_lines AS SELECT \"CustomerID\", "
                        "\"InvoiceDate\"::timestamp AS \"InvoiceDate\", \"Sales\" FROM texts")
    url, env, words = {
        "injection": (postgres_server.url("?table=x;drop table y"), postgres_server.env(),
                      ["'x;drop table y' is not a table name"]),
        "missing table": (postgres_server.url("?table=public.nothing_here"), postgres_server.env(),
                          ["the table public.nothing_here does not exist"]),
        "wrong password": (postgres_server.url("?table=texts"), {"PGPASSWORD": "not-" + PASSWORD},
                           ["cannot connect", "password"]),
        "no server": (postgres_server.url("?table=texts").replace(f":{postgres_server.port}/", ":1/"),
                      postgres_server.env(), ["cannot connect", "check that the server is running"]),
        "no rows": (postgres_server.url("?query=" + quote("SELECT * FROM texts_as_lines WHERE false", safe="")),
                    postgres_server.env(), ["has no line dated before 2011-12-01"]),
        "not dates": (postgres_server.url("?table=texts"), postgres_server.env(),
                      ["column 'InvoiceDate' does not hold dates"]),
    }[case]
    done = run_cli("run", "--input", url, "--as-of", "2011-12", "--artifacts", str(tmp_path), env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    for word in words:
        assert word in message, message
    no_password_in(message, done.stdout, tmp_path)


# --- the customer table exported to PostgreSQL ----------------------------------------------------

@pytest.fixture(scope="module")
def two_months(prefect_server, tmp_path_factory):
    """Two months of the UCI data (a six-month window), the second continuing the first's ids."""
    artifacts = tmp_path_factory.mktemp("export-months")
    done = run_cli("backfill", "--input", str(real(REAL_PARQUET)), "--from", "2011-10", "--to", "2011-11", "--window",
                   "6", "--artifacts", str(artifacts), "--json", "--no-basket", "--no-chaid")
    assert done.returncode == 0, done.stderr
    months = [json.loads(line) for line in done.stdout.splitlines()[:-1]]
    return artifacts, months


def table_rows(server, run_id: str | None = None, table: str = "customer_segments") -> int:
    where = f" WHERE run_id = '{run_id}'" if run_id else ""
    return int(server.sql(f"SELECT count(*) FROM {table}{where}"))


@pytest.mark.real_data
def test_an_export_lands_once_and_latest_follows_the_newest_month(postgres_server, two_months):
    artifacts, (october, november) = two_months
    target = postgres_server.url("?table=public.customer_segments")
    first = run_cli("export", october["run_id"], "--to", target, "--artifacts", str(artifacts), "--json",
                    env=postgres_server.env())
    assert first.returncode == 0, first.stderr
    assert table_rows(postgres_server, october["run_id"]) == october["customers"]
    content = postgres_server.sql("SELECT md5(string_agg(t::text, '|' ORDER BY \"CustomerID\")) FROM customer_segments t")
    again = run_cli("export", october["run_id"], "--to", target, "--artifacts", str(artifacts), env=postgres_server.env())
    assert again.returncode == 0, again.stderr
    assert table_rows(postgres_server) == october["customers"]
    assert postgres_server.sql(
        "SELECT md5(string_agg(t::text, '|' ORDER BY \"CustomerID\")) FROM customer_segments t") == content
    assert postgres_server.sql("SELECT DISTINCT run_id FROM customer_segments_latest") == october["run_id"]
    later = run_cli("export", november["run_id"], "--to", target, "--artifacts", str(artifacts), env=postgres_server.env())
    assert later.returncode == 0, later.stderr
    assert postgres_server.sql("SELECT DISTINCT run_id FROM customer_segments_latest") == november["run_id"]
    assert table_rows(postgres_server, november["run_id"]) == november["customers"]
    columns = postgres_server.sql("SELECT string_agg(column_name || ':' || data_type, ',') FROM "
                                  "information_schema.columns WHERE table_name = 'customer_segments'")
    assert "as_of:date" in columns and "clv:double precision" in columns and "segment_id:text" in columns
    key = postgres_server.sql("SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON "
                              "a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE "
                              "i.indrelid = 'customer_segments'::regclass AND i.indisprimary")
    assert set(key.split(",")) == {"run_id", "CustomerID"}
    no_password_in(first.stdout, first.stderr, again.stdout, later.stdout, artifacts)


@pytest.mark.real_data
def test_an_export_killed_halfway_leaves_the_table_as_it_was(postgres_server, two_months):
    artifacts, (october, november) = two_months
    target = postgres_server.url("?table=public.killed")
    assert run_cli("export", october["run_id"], "--to", target, "--artifacts", str(artifacts),
                   env=postgres_server.env()).returncode == 0
    before = postgres_server.sql("SELECT md5(string_agg(t::text, '|' ORDER BY run_id, \"CustomerID\")) FROM killed t")
    process = subprocess.Popen([str(BIN / "segment"), "export", november["run_id"], "--to", target, "--artifacts",
                                str(artifacts)], env={**os.environ, **postgres_server.env(), "SEGMENT_FAULT": "export:hang"},
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until its transaction holds the rows, uncommitted
        if postgres_server.sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'") != "0":
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    time.sleep(1)
    assert postgres_server.sql(
        "SELECT md5(string_agg(t::text, '|' ORDER BY run_id, \"CustomerID\")) FROM killed t") == before
    assert table_rows(postgres_server, november["run_id"], "killed") == 0


@pytest.mark.real_data
def test_two_exports_at_once_both_land(postgres_server, two_months):
    artifacts, months = two_months
    target = postgres_server.url("?table=public.together")
    processes = [subprocess.Popen([str(BIN / "segment"), "export", m["run_id"], "--to", target, "--artifacts",
                                   str(artifacts)], env={**os.environ, **postgres_server.env()}, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in months]
    outcomes = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outcomes
    for month in months:
        assert table_rows(postgres_server, month["run_id"], "together") == month["customers"]


def test_export_mistakes_are_one_paragraph(prefect_server, postgres_server, tmp_path):
    done = run_cli("run", "--input", str(SAMPLE), "--artifacts", str(tmp_path), "--json", "--no-basket", "--no-chaid")
    run_id = last_json(done.stdout)["run_id"]
    (tmp_path / "blocker").write_text("a file, where the target's folder would be")
    cases = [
        ((run_id, "--to", str(tmp_path / "blocker" / "x.csv")), ["cannot write"]),
        ((run_id, "--to", str(tmp_path / "x.xlsx")), ["give a .csv or .parquet file"]),
        (("20991231T000000Z-00000000", "--to", str(tmp_path / "x.csv")), ["no run 20991231T000000Z-00000000"]),
        ((run_id, "--to", postgres_server.url("?table=t", password="wrong-" + PASSWORD)), ["cannot connect"]),
    ]
    for args, words in cases:
        result = run_cli("export", *args, "--artifacts", str(tmp_path), env={"PGPASSWORD": ""})
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        for word in words:
            assert word in result.stderr, result.stderr
        assert PASSWORD not in result.stderr
    assert (tmp_path / "blocker").is_file() and not (tmp_path / "x.xlsx").exists()
