"""Run SQL queries with DuckDB over every Delta table of a sluice lake.

usage: duckdb_query.py LAKE_DIR [VIEWS_DIR] [--time] < queries.json
queries.json is a JSON list of SQL strings. Each table <lake>/<layer>/<name> becomes the
view <schema>.<name> over delta_scan (schemas bronze, silver, gold; _sluice is sluice),
and each VIEWS_DIR/<name>.sql the view views.<name>. With --time, each query runs three
times and prints {"seconds": fastest, "rows": n} instead of its rows (the benchmark).
Prints a JSON list holding, per query, its rows as objects keyed by column name (dates
and times in ISO 8601, decimals as numbers), or {"error": "..."} when DuckDB refuses it.
"""
import datetime
import decimal
import glob
import json
import os
import sys
import time

import duckdb

ext = glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext", "extensions", "*", "*", "delta.duckdb_extension"))
if not ext:
    sys.exit("duckdb-ext-delta is not installed next to duckdb")
con = duckdb.connect(config={"allow_unsigned_extensions": True})
con.execute(f"LOAD '{ext[0]}'")
con.execute("SET TimeZone = 'UTC'")

timing = "--time" in sys.argv
args = [a for a in sys.argv[1:] if a != "--time"]
lake = args[0]
for layer, schema in [("bronze", "bronze"), ("silver", "silver"), ("gold", "gold"), ("_sluice", "sluice")]:
    base = os.path.join(lake, layer)
    if not os.path.isdir(base):
        continue
    con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    for name in sorted(os.listdir(base)):
        table = os.path.join(base, name)
        if os.path.isdir(os.path.join(table, "_delta_log")):
            con.execute(f"CREATE VIEW \"{schema}\".\"{name}\" AS SELECT * FROM delta_scan('{table}')")

if len(args) > 1:
    con.execute('CREATE SCHEMA IF NOT EXISTS "views"')
    for path in sorted(glob.glob(os.path.join(args[1], "*.sql"))):
        name = os.path.basename(path)[: -len(".sql")]
        with open(path) as f:
            con.execute(f'CREATE VIEW "views"."{name}" AS {f.read()}')


def plain(v):
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return v


out = []
for query in json.load(sys.stdin):
    if timing:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            rows = con.execute(query).fetchall()
            best = min(best, time.perf_counter() - started)
        out.append({"seconds": best, "rows": len(rows)})
        continue
    try:
        cur = con.execute(query)
        names = [d[0] for d in cur.description]
        out.append([{n: plain(v) for n, v in zip(names, row)} for row in cur.fetchall()])
    except duckdb.Error as e:
        out.append({"error": str(e)})
print(json.dumps(out))
