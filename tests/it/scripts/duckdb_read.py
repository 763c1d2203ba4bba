"""Read a Delta table with DuckDB's delta extension and print one JSON row of aggregates.

usage: duckdb_read.py TABLE_DIR SQL_SELECT_LIST
The select list is evaluated over delta_scan(TABLE_DIR).
"""
import glob
import json
import os
import sys

import duckdb

ext = glob.glob(os.path.join(os.path.dirname(duckdb.__file__), "..", "duckdb_ext", "extensions", "*", "*", "delta.duckdb_extension"))
if not ext:
    sys.exit("duckdb-ext-delta is not installed next to duckdb")
con = duckdb.connect(config={"allow_unsigned_extensions": True})
con.execute(f"LOAD '{ext[0]}'")
row = con.execute(f"select {sys.argv[2]} from delta_scan('{sys.argv[1]}')").fetchone()
print(json.dumps([v if isinstance(v, (int, float, str, type(None))) else str(v) for v in row]))
