"""The accepted ids of a run's parent tables (``crossdb.loading.idsets.AcceptedIds``) are a
set: whatever the order of additions, merges and lookups, every question it answers is the
one a Python set of the same ids answers. Small thresholds make merges, in-place growth,
the copy when an IdSet still shares the array, the bitmap and the sorted-array lookups all
happen within a few steps. The negative controls break one step each: the machine must
find it.
"""

import numpy as np
import pytest
from crossdb.loading import idsets
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

IDS = st.integers(-20, 60) | st.sampled_from([-(2**63), 2**63 - 1, 10**12])
SETTINGS = settings(max_examples=60, stateful_step_count=30, deadline=None)


class SmallIdSet(idsets.IdSet):
    TABLE_SPAN = 64
    BITS_PER_ID = 8
    BUILD_CHUNK = 3


class SmallAccepted(idsets.AcceptedIds):
    MERGE_AT = 6


def machine(accepted_class, idset_class=SmallIdSet):
    accepted_class = type("Under", (accepted_class,), {"idset_class": idset_class})

    class AcceptedIdsMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.ids = accepted_class(whole_numbers=True)
            self.model = set()
            self.held = None  # an IdSet kept across additions, as a caller may keep one

        @rule(added=st.lists(IDS, max_size=8), as_array=st.booleans())
        def add(self, added, as_array):
            self.ids.add(np.array(added, dtype=np.int64) if as_array else added)
            self.model.update(added)

        @rule(value=IDS | st.none() | st.just("7"))
        def contains_one(self, value):
            assert (value in self.ids) == (value in self.model)

        @rule(named=st.lists(IDS | st.none(), max_size=8))
        def unknown(self, named):
            assert self.ids.unknown(named) == [
                i for i, pk in enumerate(named) if pk not in self.model
            ]

        @rule(values=st.lists(IDS, max_size=8))
        def contains_many(self, values):
            # the ids held and their neighbours too: the edges of a bitmap's span
            values += [i + d for i in self.model for d in (-1, 0, 1) if -(2**63) < i < 2**63 - 1]
            self.held = self.ids.idset()
            got = self.held.contains(np.array(values, dtype=np.int64)).tolist()
            assert got == [v in self.model for v in values]

        @rule(wanted=st.sets(IDS, max_size=8))
        def difference(self, wanted):
            assert self.ids.difference(wanted) == wanted - self.model

        @rule()  # a rule, not an invariant: counting merges, so lookups meet unmerged ids
        def counts(self):
            assert len(self.ids) == len(self.model)

    return AcceptedIdsMachine


def run(machine_class):
    machine_class.TestCase.settings = SETTINGS
    machine_class.TestCase().runTest()


def test_accepted_ids_answer_as_a_set_does():
    run(machine(SmallAccepted))


def test_text_ids_answer_as_a_set_does():
    ids = idsets.AcceptedIds(whole_numbers=False)
    ids.add(["b", "a", "b"])
    assert len(ids) == 2 and "a" in ids and "c" not in ids
    assert ids.unknown(["a", "c", None]) == [1, 2]
    assert ids.difference({"a", "z"}) == {"z"}


def test_whole_number_ids_take_8_bytes_each_and_their_bitmap_at_most_8_more():
    ids = idsets.AcceptedIds(whole_numbers=True)
    for start in range(0, 300_000, 50_000):
        ids.add(list(range(start * 3, (start + 50_000) * 3, 3)))
    assert ids._sorted.nbytes == 8 * 300_000
    bitmap = ids.idset().bitmap
    assert bitmap is not None and bitmap.nbytes <= 8 * 300_000


class ForgetsRecent(SmallAccepted):
    """Broken: a lookup of one id ignores the additions not merged yet."""

    def __contains__(self, pk):
        return isinstance(pk, int) and bool(len(self._sorted)) and pk in self._sorted.tolist()


class MergesDuplicates(SmallAccepted):
    """Broken: a merge keeps an id already held, so the count is wrong."""

    def _merge(self):
        if self._recent:
            added = np.sort(np.concatenate(self._recent))
            self._recent, self._recent_count = [], 0
            self._sorted = np.sort(np.concatenate([self._sorted, added]))


class OffByOneBitmap(SmallIdSet):
    """Broken: the bitmap's span leaves out the highest id."""

    def _build(self, ids):
        super()._build(ids)
        if self.bitmap is not None:
            self.span -= 1


@pytest.mark.parametrize(
    "broken",
    [
        (ForgetsRecent, SmallIdSet),
        (MergesDuplicates, SmallIdSet),
        (SmallAccepted, OffByOneBitmap),
    ],
    ids=["lookup-ignores-recent", "merge-keeps-duplicates", "bitmap-short"],
)
def test_negative_controls_the_machine_finds_each_broken_step(broken):
    accepted_class, idset_class = broken
    broken_machine = machine(accepted_class, idset_class)
    broken_machine.TestCase.settings = settings(
        SETTINGS,
        max_examples=300,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,  # the same examples every run: a control that cannot flake
        report_multiple_bugs=False,
    )
    with pytest.raises(AssertionError):
        broken_machine.TestCase().runTest()
