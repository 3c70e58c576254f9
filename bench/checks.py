"""What the bench checks a row did, beyond the count of rows stored: a re-run row is only
worth its figure if it met what it was built to meet. Each check raises BenchFailed with one
line; none is part of a measurement."""

import json
import re

from bench.measure import BenchFailed

# The last line insert_data prints: "1,110,000 stored, 0 already present, 0 rejected in 2.1s"
SUMMARY = re.compile(r"([\d,]+) stored, ([\d,]+) already present, ([\d,]+) rejected in ")


def found(measured, label, new=0, changed=0):
    """A plain-code join found new and changed rows as many as the files hold (it prints
    its totals as JSON: bench.references)."""
    try:
        totals = json.loads(measured.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchFailed(f"{label} printed no totals (got {measured.stdout.strip()!r})") from None
    if totals != {"new": new, "changed": changed}:
        raise BenchFailed(
            f"{label} found {totals['new']:,} new and {totals['changed']:,} changed rows, "
            f"expected {new:,} and {changed:,}"
        )


def verdicts(measured, label, stored=0, present=0, rejected=0):
    """insert_data's summary line gives these counts: a re-run over the finished load must
    find every row present, or with every row changed reject every one as a conflict."""
    summaries = SUMMARY.findall(measured.stdout)
    if not summaries:
        raise BenchFailed(f"{label} printed no summary line (stored, present, rejected)")
    got = tuple(int(n.replace(",", "")) for n in summaries[-1])
    if got != (stored, present, rejected):
        raise BenchFailed(
            f"{label}: {got[0]:,} stored, {got[1]:,} already present, {got[2]:,} rejected; "
            f"expected {stored:,}, {present:,} and {rejected:,}"
        )
