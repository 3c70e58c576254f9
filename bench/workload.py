"""Write the benchmark workload as CSV files, from the same generator insert_data uses."""

import csv
from pathlib import Path

from core.sources import SyntheticSource
from core.tables import SPECS, TABLES

SIZES = {"users": 100_000, "products": 10_000, "orders": 1_000_000}


def build(directory, sizes=SIZES, seed=1):
    """Write users.csv, products.csv and orders.csv to directory unless they are already there."""
    directory = Path(directory)
    stamp = directory / "SIZES"
    wanted = f"{sorted(sizes.items())} seed={seed} columns=2"
    if stamp.exists() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    source = SyntheticSource(seed=seed, **sizes)
    for table in TABLES:
        spec = SPECS[table]
        with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            # the computed keys too (email_key), so plain code can fill the real schema;
            # insert_data ignores the extra column and computes the key itself
            writer.writerow(spec.columns)
            writer.writerows(spec.clean(values)[0] for _line, values in source.rows(table))
    stamp.write_text(wanted)
    return directory
