"""The rules of a load, written out plainly, as the yardstick for tests/test_verdicts.py.

This module restates the rules of ``crossdb.loading.load`` (a run) and ``crossdb.rules`` (a
field) from their docstrings, without importing either: if the loader and this file
disagree, one of them is wrong, and the test says which input showed it. Only the field
limits are read from the models, so a changed ``max_length`` does not need two edits.

It is written to be read, not to be fast: one loop over the rows, parents before children.

* Ids and references: a whole number from 1 to 2**63-1 in plain decimal notation, surrounding
  spaces ignored; ``5.0`` is the id 5.
* quantity: a whole number from 1 to 2**31-1, written the same way.
* price: plain decimal notation (no exponent, separators or currency sign), > 0, at most
  2 decimal places and 12 digits; stored with exactly 2 places.
* name, email: trimmed, not empty, at most max_length characters, no line break and no
  control character other than tab (Unicode category Cc, plus the line and paragraph
  separators); an email has one ``@``, no spaces and a dot in its domain, and no character
  that shows as nothing (category Cf, or a default-ignorable letter or mark). Letters that
  only look alike (``ı`` and ``i``) make different emails.
* The first row with an id that passes every rule (its fields, its email's key, its parents)
  wins the id. A later row with that id, or a row whose id is already stored, is "already
  present" when its data is the same (emails compared by key) and rejected otherwise.
* An email's key (NFKC, case-folded, trimmed) belongs to the stored row that has it, or to
  the first row of the run that wins its id with it; any other row with that key is rejected.
* An order is stored only if its user and its product are stored: before the run, or by it.
"""

import re
import unicodedata
from decimal import Decimal

from core.models import Order, Product, User

ID_MAX = 2**63 - 1  # BigIntegerField
QUANTITY_MAX = 2**31 - 1  # IntegerField
NAME_MAX = {"users": User._meta.get_field("name").max_length}
NAME_MAX["products"] = Product._meta.get_field("name").max_length
EMAIL_MAX = User._meta.get_field("email").max_length
PRICE = Product._meta.get_field("price")
QUANTITY_MIN = min(v.limit_value for v in Order._meta.get_field("quantity").validators)

FIELDS = {
    "users": ("id", "name", "email"),
    "products": ("id", "name", "price"),
    "orders": ("id", "user_id", "product_id", "quantity"),
}
PARENTS = {"orders": {"user_id": "users", "product_id": "products"}}

DECIMAL = re.compile(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)")
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


class Bad(ValueError):
    pass


def whole(text, low, high):
    text = text.strip()
    if not DECIMAL.fullmatch(text) or Decimal(text) != int(Decimal(text)):
        raise Bad(text)
    if not low <= int(Decimal(text)) <= high:
        raise Bad(text)
    return int(Decimal(text))


def price(text):
    text = text.strip()
    if not DECIMAL.fullmatch(text):
        raise Bad(text)
    number = Decimal(text)
    cents = number * 100
    if number <= 0 or cents != int(cents) or number >= 10 ** (PRICE.max_digits - 2):
        raise Bad(text)
    return number.quantize(Decimal("0.01"))


def text(value, max_length):
    for char in value:
        if char != "\t" and (unicodedata.category(char) == "Cc" or char in "\u2028\u2029"):
            raise Bad(value)
    value = value.strip()
    if not value or len(value) > max_length:
        raise Bad(value)
    return value


# Default-ignorable code points that are not format characters (Cf): the combining
# grapheme joiner, Hangul fillers, Khmer inherent vowels, Mongolian free variation
# selectors, variation selectors.
IGNORABLE = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0}
IGNORABLE |= {*range(0x180B, 0x1810), *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}


def invisible(char):
    return unicodedata.category(char) == "Cf" or ord(char) in IGNORABLE


def email(value):
    value = text(value, EMAIL_MAX)
    if not EMAIL.fullmatch(value) or any(map(invisible, value)):
        raise Bad(value)
    return value


def email_key(value):
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value.strip()).casefold())


def an_id(value):
    return whole(value, 1, ID_MAX)


CLEAN = {
    "users": (an_id, lambda v: text(v, NAME_MAX["users"]), email),
    "products": (an_id, lambda v: text(v, NAME_MAX["products"]), price),
    "orders": (an_id, an_id, an_id, lambda v: whole(v, QUANTITY_MIN, QUANTITY_MAX)),
}


def clean(table, values):
    """Return the cleaned row, or None when a field breaks its rule."""
    try:
        return tuple(rule(v) for rule, v in zip(CLEAN[table], values, strict=True))
    except Bad:
        return None


def first_id(values):
    """The id a rejection names: the cleaned id, or None when the id itself is bad."""
    try:
        return an_id(values[0])
    except Bad:
        return None


def comparable(table, row):
    """The data that decides "the same row": the email by its key."""
    return row[:2] + (email_key(row[2]),) if table == "users" else row


def with_key(table, row):
    """A users row as it is stored: the email's key appended."""
    return row + (email_key(row[2]),) if table == "users" else row


def reference_load(rows, stored=None):
    """Return (stored rows per table, verdicts per table).

    ``rows`` maps a table to its input rows (tuples of raw strings, in input order),
    ``stored`` maps a table to the cleaned rows already in the database. Stored rows are
    {id: row}, users rows with their email key appended; a verdict is "stored", "present"
    or ("rejected", id or None), one per input row.
    """
    result = {t: {r[0]: with_key(t, r) for r in (stored or {}).get(t, ())} for t in FIELDS}
    owners = {row[3]: pk for pk, row in result["users"].items()}
    verdicts = {}
    for table in FIELDS:  # parents first
        verdicts[table] = []
        for values in rows.get(table, ()):
            verdicts[table].append(verdict(table, values, result, owners))
    return result, verdicts


def verdict(table, values, result, owners):
    row = clean(table, values)
    rejected = ("rejected", first_id(values))
    if row is None:
        return rejected
    for position, field in enumerate(FIELDS[table]):
        parent = PARENTS.get(table, {}).get(field)
        if parent and row[position] not in result[parent]:
            return rejected
    earlier = result[table].get(row[0])
    if earlier is not None:
        same = comparable(table, earlier[: len(row)]) == comparable(table, row)
        return "present" if same else rejected
    if table == "users":
        if email_key(row[2]) in owners:
            return rejected
        owners[email_key(row[2])] = row[0]
    result[table][row[0]] = with_key(table, row)
    return "stored"
