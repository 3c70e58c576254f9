"""Write the benchmark workload as CSV files, from the same generator insert_data uses, and
the same rows as JSONL files (``as_jsonl``), as a person exporting them would write them."""

import csv
import json
import os
import shutil
from pathlib import Path

from crossdb import registry
from django.db import models

from core.sources import SyntheticSource
from core.sources.synthetic import QUANTITY_MAX

SIZES = {"users": 100_000, "products": 10_000, "orders": 1_000_000}
# What a conflicting re-run changes in every row: one column, to a value its rules accept.
CHANGED = {
    "users": ("name", lambda name: f"{name} Jr"),
    "products": ("name", lambda name: f"{name} II"),
    "orders": ("quantity", lambda quantity: str(int(quantity) % QUANTITY_MAX + 1)),
}


def build(directory, sizes=SIZES, seed=1):
    """Write users.csv, products.csv and orders.csv to directory unless they are already there."""
    directory = Path(directory)
    stamp = directory / "SIZES"
    wanted = f"{sorted(sizes.items())} seed={seed} columns=2"
    if stamp.exists() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    source = SyntheticSource(seed=seed, **sizes)
    for table in registry.tables():
        spec = registry.specs()[table]
        with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            # the computed keys too (email_key), so plain code can fill the real schema;
            # insert_data ignores the extra column and computes the key itself
            writer.writerow(spec.columns)
            writer.writerows(spec.clean(values)[0] for _line, values in source.rows(table))
    stamp.write_text(wanted)
    return directory


def as_jsonl(csv_dir):
    """The rows of csv_dir's files as JSONL in a sibling directory, made once: whole numbers
    as JSON numbers, decimals (the price) as JSON numbers, text as strings, without the
    computed email key (a file from elsewhere would not have it)."""
    csv_dir = Path(csv_dir)
    directory = csv_dir.with_name(csv_dir.name + "-jsonl")
    stamp = directory / "SIZES"
    wanted = (csv_dir / "SIZES").read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for table in registry.tables():
        spec = registry.specs()[table]
        numbers = set(spec.fields) if spec.whole_numbers else {"id"}
        decimals = {
            name
            for name in spec.fields
            if isinstance(spec.model._meta.get_field(name), models.DecimalField)
        }
        with (
            open(csv_dir / f"{table}.csv", newline="", encoding="utf-8") as source,
            open(directory / f"{table}.jsonl", "w", encoding="utf-8") as out,
        ):
            for row in csv.DictReader(source):
                record = {}
                for name in spec.fields:
                    value = row[name]
                    if name in numbers:
                        record[name] = int(value)
                    elif name in decimals:
                        record[name] = float(value)  # a JSON number: repr keeps every cent
                    else:
                        record[name] = value
                out.write(json.dumps(record) + "\n")
    stamp.write_text(wanted)
    return directory


def conflicting(csv_dir):
    """csv_dir's files with the same ids and every row's data changed (``CHANGED``), in a
    sibling directory, made once: loaded over the finished load, every row meets its id
    stored with other data, so every row is rejected as a conflict."""
    csv_dir = Path(csv_dir)
    directory = csv_dir.with_name(csv_dir.name + "-conflicting")
    stamp = directory / "SIZES"
    wanted = (csv_dir / "SIZES").read_text()
    if stamp.exists() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for table, (column, change) in CHANGED.items():
        with (
            open(csv_dir / f"{table}.csv", newline="", encoding="utf-8") as source,
            open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as out,
        ):
            reader, writer = csv.reader(source), csv.writer(out)
            header = next(reader)
            writer.writerow(header)
            at = header.index(column)
            for row in reader:
                row[at] = change(row[at])
                writer.writerow(row)
    stamp.write_text(wanted)
    return directory


def appended(csv_dir, sizes, seed=2):
    """As many new orders as csv_dir holds, ids following on from its last, naming its
    users and products, as orders.csv alone in a sibling directory, made once: a daily
    load of new orders into a table that already holds orders."""
    csv_dir = Path(csv_dir)
    directory = csv_dir.with_name(csv_dir.name + "-append")
    stamp = directory / "SIZES"
    wanted = f"{(csv_dir / 'SIZES').read_text()} append seed={seed}"
    if stamp.exists() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    spec = registry.specs()["orders"]
    at = spec.columns.index("id")
    shift = sizes["orders"]  # the generator's ids start where the workload's do
    with open(directory / "orders.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(spec.columns)
        for _line, values in SyntheticSource(seed=seed, **sizes).rows("orders"):
            row = list(spec.clean(values)[0])
            row[at] += shift
            writer.writerow(row)
    stamp.write_text(wanted)
    return directory


def by_level(csv_dir):
    """(a directory of the parent tables' files, one of the child tables'), beside csv_dir:
    a load of the parents, then a load of the children alone, as a daily load of orders
    into a database that holds its users and products would run."""
    csv_dir = Path(csv_dir)
    wanted = (csv_dir / "SIZES").read_text()
    parts = []
    for suffix, children in (("parents", False), ("children", True)):
        directory = csv_dir.with_name(f"{csv_dir.name}-{suffix}")
        parts.append(directory)
        stamp = directory / "SIZES"
        if stamp.exists() and stamp.read_text() == wanted:
            continue  # made once per workload, like as_jsonl's
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        for table in registry.tables():
            if bool(registry.specs()[table].references) == children:
                _link_or_copy(csv_dir / f"{table}.csv", directory / f"{table}.csv")
        stamp.write_text(wanted)
    return tuple(parts)


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def sizes_in(directory):
    """{table: data rows} of the CSV files in directory."""
    sizes = {}
    for path in sorted(Path(directory).glob("*.csv")):
        with open(path, "rb") as handle:
            sizes[path.stem] = sum(1 for _ in handle) - 1
    return sizes


def rows_in(directory):
    """The data rows of the CSV files in directory."""
    return sum(sizes_in(directory).values())
