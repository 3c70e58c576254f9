"""The rules of a load of the kinds tables (``tests/kinds``: shelves and items), written out
plainly, as the yardstick for tests/test_verdicts_kinds.py.

Like ``tests/reference_rules.py`` it restates the rules from their documentation without
importing ``crossdb``: each field is read with Python's own types (``int`` and ``Decimal``,
``float``, ``datetime.date`` and ``datetime.datetime``, ``uuid.UUID``), after a plain check
of how the value is written. Only the field limits are read from the models.

A value is a string, or None when its column or key is left out (or JSON null).

* Empty (None or only whitespace): a field with null=True takes None, one with a default
  takes the default, a blank text field takes ""; any other field is refused.
* Whole numbers (count): optional sign, digits, optionally a decimal point and digits that
  make a whole number (``3.0``); within the column's range (a 32-bit integer).
* Floats (weight): a number written with digits, an optional sign, decimal point and
  exponent, nothing else (no ``nan``, ``inf``, ``_`` or ``0x``); finite; within the field's
  Min/MaxValue validators.
* Booleans: true/t/yes/y/1 and false/f/no/n/0, any case.
* Dates: four digits, two, two, separated by hyphens, and a day of the calendar.
* Datetimes: a date, ``T`` or a space, hours and minutes, optional seconds with up to six
  decimals, and a zone: ``Z`` or an offset of hours (0-23) and minutes (0-59), with or
  without a colon. A time without a zone is refused (the project runs with USE_TZ). The
  moment must exist in UTC too (years 1 to 9999), since that is how it is stored.
* UUIDs: 32 hexadecimal digits, or the 8-4-4-4-12 hyphenated form, alone, in one pair of
  braces, or after ``urn:uuid:``.
* Text: no control character other than tab, no line or paragraph separator; trimmed,
  not empty, at most max_length characters. The text key (an item's code) follows it.
* An item's shelf must be stored (before the run or by it); its spare too, when it names
  one. A shelf the run refused is named as "rejected", one nobody gave as "missing".
* The first row with an id that passes every rule wins it; a later row with that id, or a
  row whose id is stored already, is "present" with the same data and refused otherwise.
"""

import datetime
import math
import re
import unicodedata
import uuid
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator

from tests.kinds.models import Item, Shelf

FIELDS = {
    "shelves": ("id", "label", "opened", "heated"),
    "items": (
        "code",
        "shelf",
        "spare",
        "weight",
        "fragile",
        "added",
        "expires",
        "serial",
        "note",
        "count",
    ),
}
# What a file may leave out, and what an empty value of each becomes.
DEFAULTS = {
    "shelves": {"heated": False},
    "items": {"spare": None, "expires": None, "serial": None, "note": "", "count": 1},
}
PARENTS = {"items": ("shelf", "spare")}
PARENT_NOUN = "shelf"

LABEL_MAX = Shelf._meta.get_field("label").max_length
CODE_MAX = Item._meta.get_field("code").max_length
_weight = Item._meta.get_field("weight").validators
WEIGHT_MIN = next(v.limit_value for v in _weight if isinstance(v, MinValueValidator))
WEIGHT_MAX = next(v.limit_value for v in _weight if isinstance(v, MaxValueValidator))
COUNT_MIN, COUNT_MAX = -(2**31), 2**31 - 1  # IntegerField


class Bad(ValueError):
    pass


def empty(value):
    return value is None or value.isspace() or value == ""


def text(value, max_length):
    if value is None:
        raise Bad("required")
    for char in value:
        if char == "\t":
            continue
        if unicodedata.category(char) == "Cc" or char in ("\u2028", "\u2029"):
            raise Bad("control character")
    value = value.strip()
    if not value or len(value) > max_length:
        raise Bad("length")
    return value


DIGITS = set("0123456789")


def whole(value, low, high):
    if value is None:
        raise Bad("required")
    value = value.strip()
    sign, body = (value[0], value[1:]) if value[:1] in ("+", "-") else ("", value)
    whole_part, _dot, fraction = body.partition(".")
    if not (whole_part or fraction) or not set(whole_part + fraction) <= DIGITS:
        raise Bad("not a number")
    number = Decimal(sign + (whole_part or "0") + "." + (fraction or "0"))
    if number != number.to_integral_value() or not low <= number <= high:
        raise Bad("not in range")
    return int(number)


def number(value, low, high):
    if value is None:
        raise Bad("required")
    value = value.strip()
    if not value or not set(value) <= DIGITS | set("+-.eE") or not DIGITS & set(value):
        raise Bad("not a number")
    try:
        result = float(value)
    except ValueError:
        raise Bad("not a number") from None
    if not math.isfinite(result) or not low <= result <= high:
        raise Bad("not in range")
    return result


BOOLEANS = {"true": True, "t": True, "yes": True, "y": True, "1": True}
BOOLEANS |= {"false": False, "f": False, "no": False, "n": False, "0": False}


def boolean(value):
    if value is None or value.strip().lower() not in BOOLEANS:
        raise Bad("not a boolean")
    return BOOLEANS[value.strip().lower()]


def _day(text):
    parts = text.split("-")
    if [len(p) for p in parts] != [4, 2, 2] or not all(set(p) <= DIGITS for p in parts):
        raise Bad("not a date")
    try:
        return datetime.date(*map(int, parts))
    except ValueError:
        raise Bad("not a day") from None


def date(value):
    if value is None:
        raise Bad("required")
    return _day(value.strip())


TIME = re.compile(r"([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?")
ZONE = re.compile(r"([+-])([0-9]{2}):?([0-9]{2})")


def moment(value):
    if value is None:
        raise Bad("required")
    value = value.strip()
    day, separator, rest = value[:10], value[10:11], value[11:]
    if separator not in ("T", " "):
        raise Bad("not a datetime")
    day = _day(day)
    for cut in range(len(rest), -1, -1):  # the longest time, then the zone
        if TIME.fullmatch(rest[:cut]):
            time, zone = TIME.fullmatch(rest[:cut]), rest[cut:]
            break
    else:
        raise Bad("not a time")
    if zone in ("Z", "z"):
        offset = datetime.timedelta(0)
    elif match := ZONE.fullmatch(zone):
        hours, minutes = int(match[2]), int(match[3])
        if hours > 23 or minutes > 59:
            raise Bad("not an offset")
        offset = datetime.timedelta(hours=hours, minutes=minutes)
        offset = -offset if match[1] == "-" else offset
    else:
        raise Bad("no time zone")  # naive, or something else after the time
    hour, minute, second, fraction = time.groups()
    try:
        result = datetime.datetime(
            day.year,
            day.month,
            day.day,
            int(hour),
            int(minute),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")),
            tzinfo=datetime.timezone(offset),
        )
        result.astimezone(datetime.UTC)  # it is stored in UTC
    except (ValueError, OverflowError):
        raise Bad("not a real time") from None
    return result


HEX = set("0123456789abcdefABCDEF")


def a_uuid(value):
    if value is None:
        raise Bad("required")
    value = value.strip()
    if value.startswith("urn:uuid:"):
        value = value[len("urn:uuid:") :]
    elif value.startswith("{") and value.endswith("}"):
        value = value[1:-1]
    groups = value.split("-")
    if [len(g) for g in groups] not in ([32], [8, 4, 4, 4, 12]) or not set(value) <= HEX | {"-"}:
        raise Bad("not a UUID")
    return uuid.UUID(hex="".join(groups))


def optional(rule, default):
    def clean(value):
        return default if empty(value) else rule(value)

    return clean


CLEAN = {
    "shelves": {
        "id": a_uuid,
        "label": lambda v: text(v, LABEL_MAX),
        "opened": date,
        "heated": optional(boolean, False),
    },
    "items": {
        "code": lambda v: text(v, CODE_MAX),
        "shelf": a_uuid,
        "spare": optional(a_uuid, None),
        "weight": lambda v: number(v, WEIGHT_MIN, WEIGHT_MAX),
        "fragile": boolean,
        "added": moment,
        "expires": optional(date, None),
        "serial": optional(a_uuid, None),
        "note": optional(lambda v: text(v, 10**6), ""),
        "count": optional(lambda v: whole(v, COUNT_MIN, COUNT_MAX), 1),
    },
}
assert all(set(CLEAN[t]) == set(FIELDS[t]) for t in FIELDS)
assert all(set(DEFAULTS[t]) <= set(FIELDS[t]) for t in FIELDS)


def clean(table, values):
    """Return (cleaned row, names of the fields that break their rule)."""
    row, bad = [], []
    for field, value in zip(FIELDS[table], values, strict=True):
        try:
            row.append(CLEAN[table][field](value))
        except Bad:
            row.append(None)
            bad.append(field)
    return tuple(row), bad


def reference_load(rows, stored=None):
    """Return (stored rows per table, verdicts per table).

    ``rows`` maps a table to its input rows (tuples of strings or None, in input order),
    ``stored`` maps a table to the cleaned rows already in the database. Stored rows are
    {id: row}; a verdict is "stored", "present" or ("rejected", id or None, named), named
    the sorted names of what the rejection blames: fields, and "shelf (missing)" or
    "shelf (rejected)" for a parent that is not stored.
    """
    result = {t: {r[0]: tuple(r) for r in (stored or {}).get(t, ())} for t in FIELDS}
    refused = set()  # ids of shelves rows the run refused
    verdicts = {}
    for table in FIELDS:  # parents first
        verdicts[table] = []
        for values in rows.get(table, ()):
            got = verdict(table, values, result, refused)
            if table == "shelves" and got[0] == "rejected" and got[1] is not None:
                refused.add(got[1])
            verdicts[table].append(got)
    return result, verdicts


def verdict(table, values, result, refused):
    row, named = clean(table, values)
    for field in PARENTS.get(table, ()):
        parent = row[FIELDS[table].index(field)]
        if field not in named and parent is not None and parent not in result["shelves"]:
            named.append(f"{PARENT_NOUN} ({'rejected' if parent in refused else 'missing'})")
    if named:
        return ("rejected", row[0], tuple(sorted(named)))
    earlier = result[table].get(row[0])
    if earlier is not None:
        return ("present",) if earlier == row else ("rejected", row[0], (FIELDS[table][0],))
    result[table][row[0]] = row
    return ("stored",)
