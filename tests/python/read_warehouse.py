"""Reads a weir warehouse the way users do, with DuckDB and with pyarrow's dataset API
(hive partitioning), and prints what each saw as JSON:

    python3 read_warehouse.py WAREHOUSE

{"duckdb": {"<event>/<version>/<date>/<hour>": rows, ...},
 "pyarrow": {... same keys ...},
 "invalid": rows in _invalid/ (DuckDB),
 "path_columns_in_files": [files holding a column that is also a key in their path]}
"""

import glob
import json
import os
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

def main(warehouse: str) -> None:
    out = {"duckdb": {}, "pyarrow": {}, "invalid": 0, "path_columns_in_files": []}
    for version_dir in sorted(glob.glob(os.path.join(warehouse, "event=*", "version=*"))):
        pattern = os.path.join(version_dir, "*", "*", "*.parquet")
        rows = duckdb.sql(
            f"SELECT event, version, CAST(date AS VARCHAR) AS d, hour, count(*) AS n "
            f"FROM read_parquet('{pattern}', hive_partitioning = true) GROUP BY ALL"
        ).fetchall()
        for event, version, d, hour, n in rows:
            out["duckdb"][f"{event}/{version}/{d}/{int(hour):02d}"] = n
        # pyarrow: the event's directory as a hive-partitioned dataset.
        dataset = ds.dataset(version_dir, format="parquet", partitioning="hive")
        table = dataset.to_table(columns=["id", "date", "hour"])
        event = os.path.basename(os.path.dirname(version_dir)).split("=", 1)[1]
        version = os.path.basename(version_dir).split("=", 1)[1]
        for (d, hour), n in _group(table):
            key = f"{event}/{version}/{d}/{int(hour):02d}"
            out["pyarrow"][key] = out["pyarrow"].get(key, 0) + n
    invalid = os.path.join(warehouse, "_invalid", "*", "*", "*.parquet")
    if glob.glob(invalid):
        out["invalid"] = duckdb.sql(
            f"SELECT count(*) FROM read_parquet('{invalid}', hive_partitioning = true)"
        ).fetchall()[0][0]
    for f in glob.glob(os.path.join(warehouse, "**", "*.parquet"), recursive=True):
        in_path = {part.split("=", 1)[0] for part in os.path.relpath(f, warehouse).split(os.sep) if "=" in part}
        if in_path & set(pq.read_schema(f).names):
            out["path_columns_in_files"].append(f)
    print(json.dumps(out, sort_keys=True))


def _group(table):
    counts = {}
    for d, h in zip(table.column("date").to_pylist(), table.column("hour").to_pylist()):
        counts[(str(d), h)] = counts.get((str(d), h), 0) + 1
    return counts.items()


if __name__ == "__main__":
    main(sys.argv[1])
