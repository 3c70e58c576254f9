"""Validation of a run: each batch in input order, remembering what the run accepted.

``RunValidator.validate`` turns a batch of (line, raw values) into a ``Validated``: the
rows to write, their lines, the rows rejected with their reasons, and a ``Recheck`` naming
the rows whose parents the writer must still look up inside the guard. It runs in the main
process, one batch at a time, so the outcome never depends on the writers' timing.

The rules for a run, one sentence each:

* A row is valid when every field passes its rule (``crossdb.rules``).
* An id that appears twice: the first valid row with that id wins; a later row with the
  same id is already present (same data) or a conflict (different data), decided by the
  writer, and never makes the id "rejected" (the run's ``on_conflict`` may skip a conflict,
  or write it over the row before it, ``crossdb.loading.writers``).
* A comparison key (an email) belongs to the row stored first: a row already stored, else
  the first row of the run that is stored (the writer decides, in input order, so a row
  rejected as a conflict never takes a key from a later one).
* A reference is satisfied by a parent accepted earlier in the run or committed in its
  database when the child's batch commits (looked up inside the guard, ``crossdb.guard``).
"""

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from crossdb import registry, rules
from crossdb.loading import columns, idsets
from crossdb.loading.rows import Lines
from crossdb.lookups import existing_ids
from crossdb.results import Rejection
from crossdb.rules import parent_problem


@dataclass(frozen=True)
class Recheck:
    """Rows of a batch whose parents the writer must look up inside the guard."""

    rows: frozenset = frozenset()  # row indexes whose parent was not known at validation
    rejected: dict = field(default_factory=dict)  # parent table -> ids rejected in this run
    # reference field -> the indexes, among rows, whose parent for it was not known: the
    # writer looks parents up before it waits for the run's own to commit, so only these
    # may be found missing then (a row naming a stored user may name a product of the run)
    unknown: dict = field(default_factory=dict)

    def __bool__(self):
        return bool(self.rows)


class Validated(NamedTuple):
    rows: list
    lines: list
    rejections: list
    recheck: Recheck


class RunValidator:
    """Validates batches in input order and remembers what it accepted for later references.

    Memory grows with the number of parent rows (their ids, at most 16 bytes each when
    they are whole numbers: ``idsets.AcceptedIds``), never with the number of children.
    Comparison keys are the writer's to settle, against what is stored. The ids it
    rejected are a set: a run rejects few.
    """

    def __init__(self):
        specs = registry.specs()
        self.accepted: dict[str, idsets.AcceptedIds] = {
            t: idsets.AcceptedIds(hasattr(specs[t].converters[0], "bounds"))
            for t in registry.parent_tables()
        }
        self.rejected: dict[str, set[Any]] = {t: set() for t in registry.parent_tables()}

    def validate(self, table, batch):
        """Return a Validated for one batch of (line, raw values).

        Column by column: each field's rule converts its whole column in C-level passes
        when every value takes the common case, and value by value otherwise; a row any
        rule refused is then cleaned on its own (``TableSpec.clean``) to name every
        problem. The outcome is the same either way, row by row; only the cost differs.
        """
        spec = registry.specs()[table]
        if isinstance(batch, columns.Block):
            validated = self._validate_block(spec, batch)
            if validated is not None:
                return validated
            batch = batch.rows()  # a value out of range: the rules below name it
        width = len(spec.fields)
        lines = list(map(itemgetter(0), batch))
        values = list(map(itemgetter(1), batch))
        rejections = []
        if set(map(type, values)) != {tuple} or set(map(len, values)) != {width}:
            lines, values, rejections = self._split_malformed(spec, batch)
        converted, bad = self._convert_columns(spec, values)
        rows = list(zip(*converted, strict=True)) if values else []
        problems_of = {}
        for i in sorted(bad):
            row, problems = spec.clean(values[i])
            if problems:
                problems_of[i] = list(problems)
            else:  # a value the column pass set aside that its rule accepts on its own
                rows[i] = row
        good = [i for i in range(len(rows)) if i not in problems_of] if problems_of else None
        if good is not None:
            bad_rows = [(lines[i], values[i], rows[i], problems_of[i]) for i in problems_of]
            rows = [rows[i] for i in good]
            lines = [lines[i] for i in good]
            rejections.extend(self._reject(spec, bad_rows))
        accepted = self.accepted.get(table)
        if accepted is not None and rows:
            ids = [r[0] for r in rows] if bad else converted[0]
            accepted.add(ids)
            if self.rejected[table]:
                self.rejected[table].difference_update(ids)
        rejections.sort(key=lambda r: r.line or 0)
        recheck = self._recheck(spec, rows, None if bad else converted)
        return Validated(rows, lines, rejections, recheck)

    def _validate_block(self, spec, block):
        """The Validated for a Block whose every value is in range, or None.

        The same outcome as the row path: a Block holds only whole numbers, so a row is
        valid when each lies in its rule's bounds; references and accepted ids are then
        settled as in ``validate``, an array at a time.
        """
        values = block.values
        for convert, column in zip(spec.converters, values.T, strict=True):
            if not idsets.within(column, *convert.bounds):
                return None
        accepted = self.accepted.get(spec.name)
        if accepted is not None:
            accepted.add(values[:, 0])
            if self.rejected[spec.name]:
                self.rejected[spec.name].difference_update(values[:, 0].tolist())
        unknown = np.zeros(len(values), dtype=bool)
        unknown_by_field = {}
        for reference in spec.references:
            named = values[:, spec.position(reference.field)]
            missing = ~self.accepted[reference.parent].contains(named)
            if missing.any():
                unknown_by_field[reference.field] = frozenset(np.flatnonzero(missing).tolist())
                unknown |= missing
        recheck = Recheck()
        if unknown.any():
            at = np.flatnonzero(unknown)
            rejected = {}  # for the wording: the unknown parents this run rejected
            for reference in spec.references:
                if self.rejected[reference.parent]:
                    named = values[at, spec.position(reference.field)].tolist()
                    if ids := self.rejected[reference.parent].intersection(named):
                        rejected[reference.parent] = frozenset(ids)
            recheck = Recheck(frozenset(at.tolist()), rejected, unknown_by_field)
        return Validated(values, block.lines, [], recheck)

    def _split_malformed(self, spec, batch):
        """Set aside what the source could not split into fields
        (``crossdb.loading.rows.Malformed``)."""
        width = len(spec.fields)
        lines, values, rejections = [], [], []
        for line, row_values in batch:
            if type(row_values) in (tuple, list) and len(row_values) == width:
                lines.append(line)
                values.append(tuple(row_values))
            else:
                reason = getattr(row_values, "reason", None) or (
                    row_values if isinstance(row_values, str) else f"expected {width} fields"
                )
                raw = getattr(row_values, "raw", None)
                rejections.append(Rejection(spec.name, line, None, reason, {}, raw))
        return lines, values, rejections

    def _convert_columns(self, spec, values):
        """Convert every column; return (columns, indexes of rows some rule refused)."""
        if not values:
            return [[] for _ in spec.columns], set()
        columns, bad = [], set()
        # itemgetter per field, not zip(*values): zip over 50,000 tuples is ten times slower
        transposed = [list(map(itemgetter(i), values)) for i in range(len(spec.fields))]
        for convert, column in zip(spec.converters, transposed, strict=True):
            fast = getattr(convert, "column", None)
            converted = fast(column) if fast else None
            if converted is None:
                converted = []
                for index, value in enumerate(column):
                    try:
                        converted.append(convert(value))
                    except rules.Invalid:
                        converted.append(None)
                        bad.add(index)
            columns.append(converted)
        for key in spec.keys:
            source = columns[spec.fields.index(key.source)]
            keys = [None if v is None else key.normalize(v) for v in source]
            if keys and max(map(len, filter(None, keys)), default=0) > key.max_length:
                bad.update(i for i, k in enumerate(keys) if key.problem(k))
            columns.append(keys)
        return columns, bad

    def _recheck(self, spec, rows, columns=None):
        """Rows whose parent this run did not accept: the writer looks them up in the guard.

        columns, when given, are rows by column (the validator's own, when every value took
        the column pass): one array lookup per reference settles the common case.
        """
        unresolved: set[int] = set()
        unknown: dict[str, frozenset[int]] = {}
        for reference in spec.references:
            position = spec.position(reference.field)
            parents = self.accepted[reference.parent]
            if columns is not None:
                named = columns[position]
            else:
                named = list(map(itemgetter(position), rows))
            if missing := parents.unknown(named):
                at = frozenset(missing)
                unknown[reference.field] = at
                unresolved |= at
        if not unresolved:
            return Recheck()
        rejected = self._rejected_parents(spec, rows, unresolved)
        return Recheck(frozenset(unresolved), rejected, unknown)

    def _reject(self, spec, bad):
        """Turn rows with problems into Rejections, naming missing parents too.

        Rows with other problems get their references checked as well (one query per parent
        table for the whole batch), so every reason is reported at once.
        """
        accepted = self.accepted.get(spec.name)
        rejected = self.rejected.get(spec.name)
        missing: list[list[tuple[str, Any]]] = [
            [] for _ in bad
        ]  # per row: (field, id) of the parents said not to exist
        for reference in spec.references:
            position = spec.position(reference.field)
            parents = self.accepted[reference.parent]
            wanted = {r[position] for _l, _v, r, _p in bad if r[position] is not None}
            unknown = parents.difference(wanted)
            stored = existing_ids(reference.parent, unknown) if unknown else set()
            for index, (_line, _values, row, problems) in enumerate(bad):
                pk = row[position]
                if pk is None or pk in parents or pk in stored:
                    continue
                rejected_in_run = pk in self.rejected[reference.parent]
                problems.append(
                    parent_problem(
                        reference.field, reference.noun, pk, rejected_in_run=rejected_in_run
                    )
                )
                if not rejected_in_run:
                    missing[index].append((reference.field, pk))
        out = []
        for (line, values, row, problems), absent in zip(bad, missing, strict=True):
            reason = "; ".join(message for _field, message in problems)
            if isinstance(line, Lines) and line.last > line and "contains a line break" in reason:
                reason += " (an unbalanced quote?)"  # a record that ran over several lines
            raw_values = dict(zip(spec.fields, values, strict=False))
            out.append(Rejection(spec.name, line, row[0], reason, raw_values, missing=absent))
            pk = row[0]
            if (
                accepted is not None
                and rejected is not None
                and pk is not None
                and pk not in accepted
            ):
                rejected.add(pk)
        return out

    def _rejected_parents(self, spec, rows, indexes):
        """The parent ids, among rows to re-check, that this run rejected (for the wording)."""
        out = {}
        for reference in spec.references:
            position = spec.position(reference.field)
            ids = {rows[i][position] for i in indexes} & self.rejected[reference.parent]
            if ids:
                out[reference.parent] = frozenset(ids)
        return out
