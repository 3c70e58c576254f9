"""The concurrency checker (in the spirit of Jepsen, bounded in time), on SQLite and on
PostgreSQL: worker processes run random mixes of loads (windows of a fixed universe of
rows, so two loads of one id agree), ORM creates, saves, bulk_creates and re-points of
orders and reviews (the fourth table, declared only in the test settings), PROTECT and
CASCADE deletes through ``crossdb.deletion``, ``QuerySet.delete()`` and ``Model.delete()``,
while the controller kill -9s a random worker every one to three seconds and starts it again,
and an observer runs ``check_integrity`` in a loop.

``tests.concurrency.judge`` then requires: no orphan ever observed nor at the end, every
acknowledged write present unless a delete that may have run later explains its absence,
every acknowledged delete holding unless a write that may have run later explains it, every
refusal with a reason, no operation failing with an error. The negative control runs the
same mix with the guard off and must see orphans.

``make test`` runs about 20 s per backend; ``make soak`` runs MULTIDS_SOAK_SECONDS (default
300) per backend. Each run prints its counts (``-s``); the README quotes them.
"""

import os

import pytest

from tests.concurrency import judge, migrated_backend, run_checker
from tests.test_postgres import postgres_server  # noqa: F401 (fixture)

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
SHORT_SECONDS = 20
SOAK_SECONDS = float(os.environ.get("MULTIDS_SOAK_SECONDS", "300"))
soak_only = pytest.mark.skipif(
    os.environ.get("MULTIDS_SOAK") != "1", reason="long loop: run it with make soak"
)


@pytest.fixture
def backend(request, tmp_path):
    """A migrated Backend with the fourth table (tests.settings) for the test's parameter."""
    with migrated_backend(request, tmp_path, "tests.settings") as made:
        yield made


def checked(backend, seconds, seed, guard=True):
    run = run_checker(backend, seconds=seconds, seed=seed, guard=guard)
    verdict = judge(run)
    print(
        f"\nchecker on {backend.name}, {seconds:.0f} s, guard {'on' if guard else 'off'}: "
        f"{verdict.summary()}"
    )
    for violation in verdict.violations[:10]:
        print(f"  {violation[:1500]}")
    return verdict


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_checker_finds_no_violation(backend):
    verdict = checked(backend, SHORT_SECONDS, seed=8)
    assert verdict.violations == [], verdict.violations[:10]
    counts = verdict.counts
    # The run must have done what it claims to check.
    assert counts["kills"] >= 3 and counts["checks"] >= 5, counts
    outcomes = counts["by_outcome"]
    for kind in ("load ack", "create ack", "delete ack", "create refused"):
        assert outcomes.get(kind, 0) > 0, (kind, outcomes)
    assert counts["rows_acknowledged"] > 0 and counts["deletes_acknowledged"] > 0


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_negative_control_the_checker_finds_orphans_without_the_guard(backend):
    verdict = checked(backend, SHORT_SECONDS, seed=8, guard=False)
    assert verdict.counts["orphans_observed"] > 0 or verdict.counts["final_orphans"] > 0


@pytest.mark.slow
@soak_only
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_soak_checker(backend):
    verdict = checked(backend, SOAK_SECONDS, seed=int.from_bytes(os.urandom(4)))
    assert verdict.violations == [], verdict.violations[:10]
