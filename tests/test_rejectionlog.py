"""crossdb.rejectionlog: the run's rejections, in memory up to a bound and on disk beyond it.

A stateful property drives a ``RejectionLog`` with a small bound (so that runs go to disk
after a few rejections) beside a plain list, through any order of appends, rewordings
(``change_each``) and reads: every read must give what the list gives, ``sorted()`` the
list's stable sort by ``sort_key``, so the summary and the rejects file list
the same rows in the same order whether or not the rejections went to disk. The negative
controls break the log (an unstable merge, a block lost on disk, a rewording not applied to
what is on disk) and the same property must catch each.
"""

import dataclasses
import heapq
import os
import pickle

import pytest
from crossdb import rejectionlog
from crossdb.loading.rows import Lines
from crossdb.rejectionlog import RejectionLog, sort_key
from crossdb.results import LoadResult, Rejection, TableResult
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

TABLES = ("users", "products", "orders")

LINE = st.one_of(
    st.none(),
    st.integers(2, 9),
    st.builds(lambda first, more: Lines(first, first + more), st.integers(2, 9), st.integers(1, 3)),
)
REJECTION = st.builds(
    Rejection,
    table=st.sampled_from(TABLES),
    line=LINE,
    id=st.one_of(st.none(), st.integers(1, 4), st.sampled_from(["abc", "007"])),
    reason=st.sampled_from(["bad email", "quantity must be at least 1", "user 3 does not exist"]),
    values=st.fixed_dictionaries({"name": st.sampled_from(["Ann", "Bob", "\udc80x"])}),
    raw=st.one_of(st.none(), st.just('1,"unclosed')),
)


class LogBesideAList(RuleBasedStateMachine):
    """The log and a plain list get the same calls; every read must agree."""

    def __init__(self):
        super().__init__()
        self.bound = None
        self.log = None
        self.expected = []

    @precondition(lambda self: self.log is None)
    @rule(bound=st.integers(1, 6))
    def start(self, bound):
        self.bound = bound
        self.log = RejectionLog(in_memory=bound)

    @precondition(lambda self: self.log is not None)
    @rule(rejections=st.lists(REJECTION, max_size=8))
    def append(self, rejections):
        for rejection in rejections:
            self.log.append(rejection)
            self.expected.append(rejection)

    @precondition(lambda self: self.log is not None)
    @rule(word=st.sampled_from(["rejected in this run", "again"]))
    def reword(self, word):
        def change(r):
            return dataclasses.replace(r, reason=f"{r.reason} ({word})") if r.id == 3 else r

        self.log.change_each(change)
        self.expected = [change(r) for r in self.expected]

    @precondition(lambda self: self.log is not None)
    @invariant()
    def reads_agree(self):
        assert len(self.log) == len(self.expected)
        assert sorted(map(repr, self.log)) == sorted(map(repr, self.expected))
        assert list(self.log.sorted()) == sorted(self.expected, key=sort_key())
        if len(self.expected) < self.bound:  # nothing on disk: in the order they came
            assert list(self.log) == self.expected
            assert self.log == self.expected


LogBesideAList.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(rejectionlog, "BLOCK", 2)  # several blocks to a run


@pytest.mark.django_db
def test_the_log_reads_as_a_list_would(small_blocks):
    LogBesideAList.TestCase().runTest()


def _fails_the_property():
    with pytest.raises(AssertionError):
        LogBesideAList.TestCase().runTest()


@pytest.mark.django_db
def test_negative_control_an_unstable_merge_is_caught(small_blocks, monkeypatch):
    """Equal keys (same table, line and id) taken from the newest run first."""

    def newest_first(self):
        key = sort_key()
        runs = [self._read(run) for run in self._runs]
        return heapq.merge(sorted(self._memory, key=key), *reversed(runs), key=key)

    monkeypatch.setattr(RejectionLog, "sorted", newest_first)
    _fails_the_property()


@pytest.mark.django_db
def test_negative_control_a_block_lost_on_disk_is_caught(small_blocks, monkeypatch):
    def without_the_last_block(self, run):
        for offset, length in run.blocks[:-1]:
            rejections = pickle.loads(os.pread(self._file.fileno(), length, offset))
            for change in run.changes:
                rejections = [change(r) for r in rejections]
            yield from rejections

    monkeypatch.setattr(RejectionLog, "_read", without_the_last_block)
    _fails_the_property()


@pytest.mark.django_db
def test_negative_control_a_rewording_not_applied_on_disk_is_caught(small_blocks, monkeypatch):
    def in_memory_only(self, change):
        self._memory = [change(r) for r in self._memory]  # and none for the runs on disk

    monkeypatch.setattr(RejectionLog, "change_each", in_memory_only)
    _fails_the_property()


@pytest.mark.django_db
def test_a_result_with_its_rejections_on_disk_writes_the_same_rejects_file(tmp_path):
    """The rejects file of a run whose rejections went to disk is the one of a run that
    kept them all in memory, byte for byte."""
    rejections = [
        Rejection(table, line, i, f"reason {i}", {"id": str(i), "name": "Ann"})
        for i, (table, line) in enumerate(
            [(t, line) for line in (9, 3, 7, 3, 2, 8) for t in ("orders", "users")], start=1
        )
    ]
    files = {}
    for bound in (1000, 3):
        result = LoadResult("test", tables={t: TableResult(t) for t in TABLES})
        result.rejections = RejectionLog(in_memory=bound)
        for rejection in rejections:
            result.reject(rejection)
        path = tmp_path / f"rejects-{bound}.csv"
        result.write_rejects(path)
        files[bound] = path.read_bytes()
        assert (result.rejections._on_disk > 0) == (bound == 3)
    assert files[3] == files[1000]
    assert files[3].count(b"\n") == len(rejections) + 1
