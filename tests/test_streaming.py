"""Streaming: the loader's peak memory does not grow with the number of rows it loads.

Two real ``manage.py insert_data`` runs, 50,000 and 400,000 synthetic orders, each in its own
migrated directory. A ``sitecustomize`` module on PYTHONPATH records, when the command exits,
the kernel's peak resident size of the command's process (it generates and validates) and of
its largest child (a writer process), so nothing samples and nothing is missed.

Two settings make the comparison about the loader rather than about constants that fill up:
SQLite's page cache grows with the database file up to ``MULTIDS_WRITER_CACHE_MB`` per
writer, a fixed bound chosen for speed, so it is set small here; and batches are smaller
than the default so both runs fill the bounded queues, which is the steady state whose size
must not depend on the input.
"""

import tracemalloc

from crossdb.sources import FileSource

from tests.conftest import manage

SMALL, LARGE = 50_000, 400_000
SLACK_KB = 6 * 1024  # allocator and import noise between two runs of the same program

SITECUSTOMIZE = """\
import atexit
import os
import resource


def _record_peak_memory():
    with open(os.environ["MULTIDS_TEST_RSS_FILE"], "w") as handle:
        me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        handle.write(f"{me} {children}\\n")


if os.environ.get("MULTIDS_TEST_RSS_FILE"):
    atexit.register(_record_peak_memory)
"""


def peak_memory_kb(tmp_path, orders):
    """Load 2,000 users, 200 products and `orders` orders; return (main, largest child) in KB."""
    data_dir = tmp_path / f"data-{orders}"
    data_dir.mkdir()
    manage("migrate_all", data_dir=data_dir, check=True)
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    figures = tmp_path / f"rss-{orders}"
    result = manage(
        "insert_data",
        "--users=2000",
        "--products=200",
        f"--orders={orders}",
        "--batch-size=10000",
        "--no-progress",
        data_dir=data_dir,
        env={
            "PYTHONPATH": str(hook),
            "MULTIDS_TEST_RSS_FILE": str(figures),
            "MULTIDS_WRITER_CACHE_MB": "4",
        },
        check=True,
    )
    assert f"{2200 + orders:,} stored, 0 already present, 0 rejected" in result.stdout
    main, child = (int(n) for n in figures.read_text().split())
    return main, child


def test_peak_memory_does_not_grow_with_the_number_of_orders(tmp_path):
    small = peak_memory_kb(tmp_path, SMALL)
    large = peak_memory_kb(tmp_path, LARGE)
    figures = f"peak RSS in KB (main, largest writer): {SMALL:,} orders {small}, {LARGE:,} {large}"
    print(figures)
    assert large[0] < 1.25 * small[0] + SLACK_KB, figures
    assert large[1] < 1.25 * small[1] + SLACK_KB, figures
    assert small[1] > 0, "the writers' peak was not recorded; were they waited for?"


def _peak_bytes_while_reading(source, table):
    """Read every row of table from source; return (rows, peak bytes traced meanwhile).

    One untraced pass first, so caches filled on first use (codecs, the JSON scanner) are
    not counted as the cost of reading.
    """
    for _ in source.rows(table):
        pass
    tracemalloc.start()
    try:
        rows = sum(1 for _ in source.rows(table))
        return rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_files_are_read_a_block_at_a_time(tmp_path):
    """Reading 200,000 orders holds a few 64k-character blocks at most, not the file.

    The files are 3 MB (CSV) and 12 MB (JSONL); the bound is a third of the smaller.
    """
    rows_wanted = 200_000
    (tmp_path / "orders.csv").write_text(
        "id,user_id,product_id,quantity\n"
        + "".join(f"{i},{i % 97 + 1},{i % 13 + 1},{i % 5 + 1}\n" for i in range(1, rows_wanted + 1))
    )
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    (jsonl / "orders.jsonl").write_text(
        "".join(
            f'{{"id": {i}, "user_id": 1, "product_id": 2, "quantity": 3}}\n'
            for i in range(1, rows_wanted + 1)
        )
    )
    for directory in (tmp_path, jsonl):
        rows, peak = _peak_bytes_while_reading(FileSource(directory), "orders")
        assert rows == rows_wanted
        print(f"{directory.name}: {peak:,} bytes at peak")
        assert peak < 1024 * 1024, f"{directory}: {peak:,} bytes at peak"
