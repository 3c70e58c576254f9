"""The rules a value must pass before it is written: one set, derived from the model fields,
used by ``insert_data``, the admin and ``Model.clean()``.

Pure functions, no database access. ``rule_for(field)`` turns a model field into a converter
that takes one raw value (a string from CSV, a JSON value, a Python value from a form or the
synthetic generator) and returns the cleaned value or raises ``Invalid`` with a reason a
person can act on (``quantity must be at least 1 (got -1)``). ``crossdb.registry`` builds one
converter per input field of every table; there is no other path.

The rules, one sentence each:

* Ids and references: whole numbers from 1 to 2**63-1. ``3.0`` and ``7.00`` count as whole.
* Other integers: whole numbers within the column's range and the field's Min/MaxValue
  validators.
* Decimals: plain decimal notation only (no exponent, no thousands separators, no currency
  sign), finite, within ``max_digits``, at most ``decimal_places`` places, and > 0 where the
  field has the ``Positive`` validator.
* Text: required, trimmed, valid UTF-8, no line breaks, no control characters except tab,
  at most ``max_length`` characters. Emails also match a simple address shape.
* Emails hold no invisible character (``INVISIBLE``: zero-width spaces and joiners, bidi
  controls, soft hyphens...): ``zw\u200bs@x`` looks like ``zws@x`` and is another address.
* Emails are compared by ``email_key`` (NFKC, case-folded, trimmed), in Python, everywhere.
  Letters that merely look alike stay distinct (Turkish ``ı`` and ``i``, Cyrillic ``а``
  and Latin ``a``): they are different letters, so different mailboxes to a mail server,
  and folding them (Unicode's confusable skeletons) would refuse real people whose
  addresses differ by one, and change the key of every stored row.
* Floats: a finite number, plain or with an exponent (``1.5e3``), within Min/MaxValue.
* Booleans: ``true``/``false`` (also ``t``/``f``, ``yes``/``no``, ``y``/``n``, ``1``/``0``,
  any case; JSON's ``true``/``false``).
* Dates: ``YYYY-MM-DD`` and a real day. Datetimes: ISO 8601 (``2024-05-01T09:30:00``, a
  space for the ``T``, seconds and fractions optional) with its time zone (``Z`` or
  ``+02:00``, hours 0-23 and minutes 0-59) when ``USE_TZ`` is on, since a time without one
  is ambiguous; none otherwise. A moment with a time zone must fall within the years 1 to
  9999 in UTC, as it is stored.
* UUIDs: 32 hexadecimal digits, plain or hyphenated 8-4-4-4-12, alone, in braces or after
  ``urn:uuid:`` (``uuid.UUID`` alone reads ``0x`` and 30 digits, or misplaced hyphens, as
  some other UUID).
* A primary key or a reference follows the key's type (a reference: its target's key):
  whole numbers from 1 to 2**63-1, a UUID, or text.
* A field with ``null=True``, a default, or (for text) ``blank=True`` may be left empty (an
  empty cell, JSON ``null``, or no such column at all): it takes ``None``, the default, or
  ``""``, in that order of preference.

Rules that need other rows (unique keys, references) live in
``crossdb.loading.validate.RunValidator`` and ``crossdb.guard``; their wording lives here
(``parent_problem``).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.deconstruct import deconstructible

from crossdb.fields import CrossDatabaseReference

ID_MAX = 2**63 - 1  # BigIntegerField, on SQLite and PostgreSQL
# No whole number any rule accepts comes near this many digits (ids have 19 at most); a
# longer one is refused by its length, before any conversion (``_too_many_digits``).
MAX_WHOLE_DIGITS = 100
INT_RANGES = {
    "SmallIntegerField": (-(2**15), 2**15 - 1),
    "PositiveSmallIntegerField": (0, 2**15 - 1),
    "IntegerField": (-(2**31), 2**31 - 1),
    "PositiveIntegerField": (0, 2**31 - 1),
}
QUANTITY_MAX = 2**31 - 1
# Deliberately simple: one "@", no spaces, a dot in the domain. Django's EmailValidator is
# stricter but ten times slower, which matters at a million rows.
# What shows as nothing but makes two texts differ: every format character (Unicode
# category Cf: zero-width space, joiners, bidi controls, soft hyphen, byte-order mark, tags)
# and the default-ignorable letters and marks (combining grapheme joiner, Hangul fillers,
# variation selectors). tests/test_validation.py checks the list against unicodedata.
INVISIBLE = (
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f"
    "\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    "\U000e0100-\U000e01ef"
)
INVISIBLE_RE = re.compile(f"[{INVISIBLE}]")
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# One scan finds everything a text value may not contain: line breaks, control characters
# (C0 other than tab, DEL, C1), and lone surrogates (undecodable input bytes, kept by
# surrogateescape).
FORBIDDEN_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


NOT_UTF8 = "is not valid UTF-8 text"  # also counted per table for the --encoding hint


class Problem(NamedTuple):
    field: str | None
    message: str


class Converter(Protocol):
    """A rule: one raw value in, the cleaned value out (or ``Invalid``)."""

    def __call__(self, value: Any, /) -> Any: ...


class ColumnConverter(Converter, Protocol):
    """A rule that can also clean a whole column at once (None: go value by value)."""

    column: Callable[[Sequence[Any]], list[Any] | None]


class WholeConverter(ColumnConverter, Protocol):
    """A whole-number rule, with the bounds ``crossdb.loading.columns`` checks arrays against."""

    bounds: tuple[int, int]


class Invalid(ValueError):
    """A field value that breaks a rule; carries the field name for the Problem."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@deconstructible(path="crossdb.rules.Positive")
class Positive:
    """Declare on a numeric model field that it must be greater than 0."""

    def __call__(self, value: Any) -> None:
        from django.core.exceptions import ValidationError

        if value is not None and value <= 0:
            raise ValidationError(f"must be greater than 0 (got {value})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Positive)

    def __hash__(self) -> int:
        return hash(Positive)


SHOWN_CHARACTERS = 100  # a longer value is cut in a message (the rejects file keeps it whole)


JSON_WORDS = {True: "true", False: "false", None: "null"}


def shown(value: Any) -> str:
    """Render a raw value for a message: strings quoted, everything else as written; a
    value longer than ``SHOWN_CHARACTERS`` is cut, with its length (a 5,000-digit id).

    true, false and null, arrays and objects are written as JSON writes them, not as
    Python does (``True``, ``{'a': 1}``): a JSON Lines file is where they come from.
    """
    if isinstance(value, str):
        if len(value) > SHOWN_CHARACTERS:
            return f"{shown(value[: SHOWN_CHARACTERS // 2])[:-1]}...' ({len(value):,} characters)"
        if not _is_valid_text(value):
            return repr(value.encode("utf-8", "surrogateescape"))
        return repr(value)
    if value is None or isinstance(value, bool):
        return JSON_WORDS[value]
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        if len(text) > SHOWN_CHARACTERS:
            text = f"{text[: SHOWN_CHARACTERS // 2]}... ({len(text):,} characters)"
        return printable(text)
    return str(value)


def printable(text: str) -> str:
    """text as a message may quote it to a terminal: each character that is not printable
    written as its escape (``\x1b``, ``\u202e``; an undecodable input byte, kept as a lone
    surrogate, as ``\xff``). A header or a file name holding ``ESC [2J`` would otherwise
    clear the screen of whoever reads the error, or retitle their window."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escaped(char) for char in text)


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return repr(char)[1:-1]


def _shown_whole(number: int) -> str:
    """A whole number for a message: as written, or how many digits it has when it is far
    beyond any column (Python will not turn an int of over 4,300 digits into text)."""
    if number.bit_length() <= 128:
        return str(number)
    sign = "a negative" if number < 0 else "a"
    return f"{sign} number of {len(str(Decimal(abs(number)))):,} digits"


def _is_valid_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes survive reading as lone surrogates
        return False
    return True


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def email_key(email: str) -> str:
    """Return the form in which two emails are compared: trimmed, NFKC, case-folded.

    ``straße@x`` and ``STRASSE@x`` are one address, as are ``änn@x`` written precomposed or
    with a combining mark; SQLite's ``lower()`` knows neither, so the key is computed here.
    ASCII text is its own NFKC form and folds as ``lower()`` does: most addresses take that
    shorter way, which is a third of the users' validation time.
    """
    if email.isascii():
        return email.strip().lower()
    text = unicodedata.normalize("NFKC", email.strip())
    return unicodedata.normalize("NFKC", text.casefold())


# --- Numbers ----------------------------------------------------------------------------


def _number_text_problem(field: str, text: str) -> str | None:
    """Say what to remove from a number written in something other than plain notation."""
    shown_text = shown(text)
    if any(unicodedata.category(c) == "Sc" for c in text):
        return f"{field} must be a plain number (got {shown_text}): remove the currency sign"
    if re.fullmatch(r"[+-]?[0-9.]+[eE][+-]?[0-9]+", text):
        return f"{field} must be written without an exponent (got {shown_text})"
    if advice := _separators_advice(text):
        return f"{field} must be a plain number (got {shown_text}): {advice}"
    return None


class _TooManyDigits(Exception):
    """A whole number far beyond any column's range, known by its sign and size alone.

    ``int()`` refuses to read more than 4,300 digits (a ValueError, which was a 500 in the
    admin and a traceback in ``insert_data``), ``int(Decimal)`` of a million digits takes
    half a minute, and a message should not repeat thousands of them: such a value is never
    converted, and its rule names the bound it passes (``_beyond``).
    """

    def __init__(self, negative: bool, digits: int) -> None:
        super().__init__(negative, digits)
        self.negative, self.digits = negative, digits

    def shown(self) -> str:
        return f"{'a negative' if self.negative else 'a'} number of {self.digits:,} digits"


def _too_many_digits(field: str, digits: int, negative: bool = False) -> _TooManyDigits:
    return _TooManyDigits(negative, digits)


def _beyond(
    field: str, huge: _TooManyDigits, low: float, high: float, key: bool = False
) -> Invalid:
    """The Invalid for a huge whole number, by the bound it passes (key: an id's words)."""
    if huge.negative:
        bound = "a positive whole number" if key else f"at least {low}"
        return Invalid(field, f"{field} must be {bound} (got {huge.shown()})")
    return Invalid(field, f"{field} must be at most {high} (got {huge.shown()})")


def _digits(text: str, field: str) -> int:
    """int(text) for a string of ASCII digits, refusing one with too many to be in range."""
    if len(text) > MAX_WHOLE_DIGITS:  # int() counts leading zeros towards its limit
        text = text.lstrip("0") or "0"
        if len(text) > MAX_WHOLE_DIGITS:
            raise _too_many_digits(field, len(text))
    return int(text)


SEPARATED_RE = re.compile(r"([+-]?)([0-9][0-9,._' ]*[0-9])")
GROUP_MARKS_RE = re.compile("[,_' ]")


def _separators_advice(text: str) -> str | None:
    """What to write instead of a number with separators in it, or None.

    Never an edit that changes the value: a comma is a decimal separator in much of the
    world (``1,50`` is one and a half), so "remove the separators" is said only when every
    comma must be a thousands separator (several of them, or a decimal dot after it). A
    comma that can only be a decimal one (followed by other than three digits, or after
    dots or other group marks: ``1.000,50``) is named as one, with the number it makes; a
    lone comma before three digits (``1,500``) may be either, and both readings are given.
    Separators that group digits in no known way (``1,5,0``) get no advice.
    """
    match = SEPARATED_RE.fullmatch(text)
    if match is None or not GROUP_MARKS_RE.search(text):
        return None
    sign, body = match.groups()
    comma, dot = body.rfind(","), body.rfind(".")
    if body.count(",") == 1 and comma > dot:  # the last separator is the only comma
        whole, fraction = body[:comma], body[comma + 1 :]
        if not fraction.isdigit():
            return None
        as_decimal = f"{sign}{_only_digits(whole)}.{fraction}"
        if "." in whole or GROUP_MARKS_RE.search(whole):
            return f"the comma is the decimal separator: write {as_decimal}"
        if len(fraction) != 3:
            return f"write the decimal comma as a dot: {as_decimal}"
        return (
            f"the comma may be a decimal separator (write {as_decimal}) "
            f"or a thousands separator (write {sign}{whole}{fraction})"
        )
    whole, _dot, fraction = body.partition(".")
    _first, *groups = re.split("[,_' ]", whole)
    if "." in fraction or len(groups[-1]) != 3 or not all(len(g) in (2, 3) for g in groups):
        return None  # not grouped in thousands (1,000,000) or as in India (10,00,000)
    return "remove the thousands separators"


def _only_digits(text: str) -> str:
    return re.sub("[^0-9]", "", text)


def _whole_number(value: Any, field: str) -> int:
    """Return value as an int: ints, whole-number strings (``7``, ``7.00``), whole Decimals."""
    if type(value) is int:
        return value
    if _is_blank(value):
        raise Invalid(field, f"{field} is required")
    if isinstance(value, str):
        if not _is_valid_text(value):
            raise Invalid(field, f"{field} {NOT_UTF8}")
        text = value.strip()
        if PLAIN_NUMBER_RE.fullmatch(text):
            number = Decimal(text)
            if number and number.adjusted() >= MAX_WHOLE_DIGITS:
                raise _too_many_digits(field, number.adjusted() + 1, number < 0)
            if number == number.to_integral_value():
                return int(number)
        elif reason := _number_text_problem(field, text):
            raise Invalid(field, reason)
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    elif isinstance(value, float) and value.is_integer():
        return int(value)
    raise Invalid(field, f"{field} must be a whole number (got {shown(value)})")


def _whole_column(low: int, high: int) -> Callable[[Sequence[Any]], list[Any] | None]:
    """The same rule for a whole column at once, in C-level passes; None: go value by value.

    Only columns whose every value takes the common case (ASCII digit strings, or ints) are
    converted here; anything else goes through the scalar rule, which gives the reasons.
    """

    def column(values: Sequence[Any]) -> list[Any] | None:
        kinds = set(map(type, values))
        if kinds == {str}:
            digits = "".join(values)  # one pass each below, instead of one call per value
            if not (digits.isascii() and digits.isdigit()):
                return None
            try:
                numbers = list(map(int, values))
            except ValueError:  # an empty value: the scalar rule says it is required
                return None
        elif kinds == {int}:
            numbers = list(values)
        else:
            return None
        if numbers and (min(numbers) < low or max(numbers) > high):
            return None
        return numbers

    return column


def id_rule(field: str) -> WholeConverter:
    """An id or a reference: a whole number from 1 to ID_MAX."""

    def convert(value: Any) -> Any:
        try:
            if type(value) is str and value.isdigit() and value.isascii():
                number = _digits(value, field)  # the common case: a few C calls
            elif type(value) is int:
                number = value
            else:
                number = _whole_number(value, field)
        except _TooManyDigits as huge:
            raise _beyond(field, huge, 1, ID_MAX, key=True) from None
        if 0 < number <= ID_MAX:
            return number
        got = _shown_whole(number)
        if number < 1:
            raise Invalid(field, f"{field} must be a positive whole number (got {got})")
        raise Invalid(field, f"{field} must be at most {ID_MAX} (got {got})")

    rule = cast(WholeConverter, convert)  # a function with two attributes
    rule.column = _whole_column(1, ID_MAX)
    rule.bounds = (1, ID_MAX)  # for crossdb.loading.columns, which checks whole arrays
    return rule


def integer_rule(field: str, low: int, high: int, low_is_min: bool = False) -> WholeConverter:
    """A whole number in [low, high]; low and high come from the column and its validators."""

    def convert(value: Any) -> Any:
        try:
            if type(value) is str and value.isdigit() and value.isascii():
                number = _digits(value, field)
            elif type(value) is int:
                number = value
            else:
                number = _whole_number(value, field)
        except _TooManyDigits as huge:
            raise _beyond(field, huge, low, high) from None
        if low <= number <= high:
            return number
        if number < low:
            raise Invalid(field, f"{field} must be at least {low} (got {_shown_whole(number)})")
        raise Invalid(field, f"{field} must be at most {high} (got {_shown_whole(number)})")

    rule = cast(WholeConverter, convert)
    rule.column = _whole_column(low, high)
    rule.bounds = (low, high)
    return rule


def decimal_rule(field: str, places: int, max_digits: int, positive: bool) -> Converter:
    """A finite decimal in plain notation with at most ``places`` decimal places."""
    quantum = Decimal(1).scaleb(-places)
    largest = Decimal(10) ** (max_digits - places) - quantum

    def convert(value: Any) -> Any:
        if _is_blank(value):
            raise Invalid(field, f"{field} is required")
        if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
            raise Invalid(field, f"{field} must be a number (got {shown(value)})")
        if isinstance(value, float):
            if not math.isfinite(value):
                raise Invalid(field, f"{field} must be a finite number (got {shown(value)})")
            value = repr(value)
        if isinstance(value, str):
            if not _is_valid_text(value):
                raise Invalid(field, f"{field} {NOT_UTF8}")
            text = value.strip()
            if not PLAIN_NUMBER_RE.fullmatch(text):
                reason = _number_text_problem(field, text)
                raise Invalid(field, reason or f"{field} must be a number (got {shown(value)})")
            number = Decimal(text)
        else:
            number = Decimal(value)
            if not number.is_finite():
                raise Invalid(field, f"{field} must be a finite number (got {shown(value)})")
        if positive and number <= 0:
            raise Invalid(field, f"{field} must be greater than 0 (got {number})")
        if number > largest:  # before quantize, which fails on huge exponents
            raise Invalid(field, f"{field} must be at most {largest} (got {shown(value)})")
        try:
            exact = number == number.quantize(quantum, rounding="ROUND_DOWN")
        except InvalidOperation:
            exact = False
        if not exact:
            raise Invalid(
                field, f"{field} must have at most {places} decimal places (got {shown(value)})"
            )
        return number.quantize(quantum)

    return convert


# --- Text --------------------------------------------------------------------------------


def text_rule(
    field: str,
    max_length: int,
    pattern: re.Pattern[str] | None = None,
    what: str | None = None,
    visible: bool = False,
) -> ColumnConverter:
    """Required text: trimmed, valid UTF-8, no line break or control character; with
    visible, no invisible character either (``INVISIBLE``: emails).

    Every invisible character lies outside ASCII, so an ASCII column (nearly every email)
    is cleared of them by one ``isascii`` over the whole column: a pattern or a scan that
    knew them would cost each value twice the time (their ranges reach past the BMP, where
    the regex engine tests a character against each range in turn).
    """

    def convert(value: Any) -> Any:
        if type(value) is not str:
            if _is_blank(value):
                raise Invalid(field, f"{field} is required")
            raise Invalid(field, f"{field} must be text (got {shown(value)})")
        if (bad := FORBIDDEN_RE.search(value)) is not None:
            char = bad.group()
            if "\ud800" <= char <= "\udfff":
                raise Invalid(field, f"{field} {NOT_UTF8}")
            if char in LINE_BREAKS:
                raise Invalid(field, f"{field} contains a line break")
            raise Invalid(field, f"{field} contains a control character (U+{ord(char):04X})")
        text = value.strip()
        if not text:
            raise Invalid(field, f"{field} is required")
        if len(text) > max_length:
            raise Invalid(field, f"{field} is longer than {max_length} characters")
        if visible and not text.isascii() and (invisible := INVISIBLE_RE.search(text)):
            raise Invalid(
                field,
                f"{field} contains an invisible character (U+{ord(invisible.group()):04X}): "
                "it looks the same as the address without it",
            )
        if pattern is not None and not pattern.fullmatch(text):
            raise Invalid(field, f"{field} is not {what} (got {shown(value)})")
        return text

    def column(values: Sequence[Any]) -> list[Any] | None:
        """The same rule for a whole column, in C-level passes; None: go value by value."""
        if set(map(type, values)) != {str} or any(map(FORBIDDEN_RE.search, values)):
            return None
        texts = list(map(str.strip, values))
        lengths = list(map(len, texts))
        if lengths and (min(lengths) < 1 or max(lengths) > max_length):
            return None
        if pattern is not None and not all(map(pattern.fullmatch, texts)):
            return None
        if visible and not "".join(texts).isascii() and any(map(INVISIBLE_RE.search, texts)):
            return None
        return texts

    rule = cast(ColumnConverter, convert)
    rule.column = column
    return rule


# --- Floats, booleans, dates and times, UUIDs -------------------------------------------------

# The forms of a UUID: uuid.UUID alone also reads hyphens anywhere, braces repeated or on
# one side, and int(..., 16)'s own spellings (0x and 30 digits, a sign, a space), each as
# another UUID than the one meant, or as a UUID where none was written.
_UUID_HEX = "[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"
UUID_RE = re.compile(f"(?:urn:uuid:)?(?P<hex>{_UUID_HEX})|\\{{(?P<braced>{_UUID_HEX})\\}}")
FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DATETIME_RE = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[T ](?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2}"
    r"(?:\.[0-9]{1,6})?)?)(?P<zone>Z|z|[+-][0-9]{2}:?[0-9]{2})?"
)


def float_rule(field: str, low: float = -math.inf, high: float = math.inf) -> Converter:
    """A finite number, plain or with an exponent, within [low, high]."""

    def convert(value: Any) -> Any:
        if isinstance(value, bool):
            raise Invalid(field, f"{field} must be a number (got {shown(value)})")
        if isinstance(value, (int, float, Decimal)):
            number = float(value)
        elif isinstance(value, str):
            if _is_blank(value):
                raise Invalid(field, f"{field} is required")
            text = value.strip()
            if not FLOAT_RE.fullmatch(text):
                reason = _number_text_problem(field, text)
                raise Invalid(field, reason or f"{field} must be a number (got {shown(value)})")
            number = float(text)
        else:
            if _is_blank(value):
                raise Invalid(field, f"{field} is required")
            raise Invalid(field, f"{field} must be a number (got {shown(value)})")
        if not math.isfinite(number):
            raise Invalid(field, f"{field} must be a finite number (got {shown(value)})")
        if number < low:
            raise Invalid(field, f"{field} must be at least {low} (got {shown(value)})")
        if number > high:
            raise Invalid(field, f"{field} must be at most {high} (got {shown(value)})")
        return number

    return convert


def boolean_rule(field: str) -> Converter:
    """True or false, in the spellings people and programs write."""

    def convert(value: Any) -> Any:
        if value is True or value is False:
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            if not word:
                raise Invalid(field, f"{field} is required")
        elif value is None:
            raise Invalid(field, f"{field} is required")
        raise Invalid(field, f"{field} must be true or false (got {shown(value)})")

    return convert


def _real_day(field: str, text: str, value: Any) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise Invalid(field, f"{field} is not a real date (got {shown(value)})") from None


def date_rule(field: str) -> Converter:
    """A day written YYYY-MM-DD (a date object as it is)."""

    def convert(value: Any) -> Any:
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return value
        if not isinstance(value, str) or _is_blank(value):
            if _is_blank(value):
                raise Invalid(field, f"{field} is required")
            raise Invalid(field, f"{field} must be a date (got {shown(value)})")
        text = value.strip()
        if not DATE_RE.fullmatch(text):
            raise Invalid(field, f"{field} must be a date written YYYY-MM-DD (got {shown(value)})")
        return _real_day(field, text, value)

    return convert


def datetime_rule(field: str) -> Converter:
    """An ISO 8601 moment; with ``USE_TZ`` it must say its time zone (a local time without
    one names two moments a year, and which one is meant cannot be guessed)."""
    from django.conf import settings

    aware = settings.USE_TZ

    def convert(value: Any) -> Any:
        if isinstance(value, datetime.datetime):
            moment = value
        elif isinstance(value, str) and not _is_blank(value):
            match = DATETIME_RE.fullmatch(value.strip())
            if match is None:
                raise Invalid(
                    field,
                    f"{field} must be a date and time written 2024-05-01T09:30:00+02:00 "
                    f"(got {shown(value)})",
                )
            _real_day(field, match["date"], value)
            zone = match["zone"] or ""
            if zone in ("Z", "z"):
                zone = "+00:00"
            elif zone:
                # fromisoformat reads +05:75 as +06:15: an offset's minutes are checked here
                if int(zone[1:3]) > 23 or int(zone[-2:]) > 59:
                    raise Invalid(
                        field, f"{field} has no such time zone offset (got {shown(value)})"
                    )
                if ":" not in zone:
                    zone = f"{zone[:3]}:{zone[3:]}"
            try:
                moment = datetime.datetime.fromisoformat(f"{match['date']}T{match['time']}{zone}")
            except ValueError:
                raise Invalid(field, f"{field} is not a real time (got {shown(value)})") from None
        elif _is_blank(value):
            raise Invalid(field, f"{field} is required")
        else:
            raise Invalid(field, f"{field} must be a date and time (got {shown(value)})")
        if aware and moment.tzinfo is None:
            raise Invalid(
                field,
                f"{field} needs its time zone: end it with Z or an offset such as +02:00 "
                f"(got {shown(value)})",
            )
        if not aware and moment.tzinfo is not None:
            raise Invalid(
                field, f"{field} must be a local time without a time zone (got {shown(value)})"
            )
        if moment.tzinfo is not None:
            try:  # stored in UTC: 0001-01-01T00:30+01:00 is a moment of the year 0
                moment.astimezone(datetime.UTC)
            except OverflowError:
                raise Invalid(
                    field, f"{field} is outside the years 1 to 9999 in UTC (got {shown(value)})"
                ) from None
        return moment

    return convert


def uuid_rule(field: str) -> Converter:
    """A UUID written as 32 hexadecimal digits or hyphenated 8-4-4-4-12, alone, in braces or
    after ``urn:uuid:`` (``UUID_RE``)."""

    def convert(value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return value
        if isinstance(value, str) and not _is_blank(value):
            if match := UUID_RE.fullmatch(value.strip()):
                return uuid.UUID(hex=match["hex"] or match["braced"])
        elif _is_blank(value):
            raise Invalid(field, f"{field} is required")
        raise Invalid(field, f"{field} must be a UUID (got {shown(value)})")

    return convert


def optional(rule: Converter, default: Callable[[], Any]) -> Converter:
    """rule for a value that may be left empty (None, an empty or blank string): then
    default() instead. Such a rule has no column pass and no bounds, so its table takes the
    row path (``crossdb.loading.columns`` only takes tables of required whole numbers)."""

    def convert(value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return default()
        return rule(value)

    return convert


# --- From model fields -------------------------------------------------------------------


def field_bounds(field: models.Field[Any, Any], low: _N, high: _N) -> tuple[_N, _N]:
    """low and high narrowed by the field's Min/MaxValueValidators (the rules' bounds and
    the generator's)."""
    for validator in field.validators:
        if isinstance(validator, MinValueValidator):
            low = max(low, validator.limit_value)
        elif isinstance(validator, MaxValueValidator):
            high = min(high, validator.limit_value)
    return low, high


_N = TypeVar("_N", int, float, Decimal)


INTEGER_KINDS = frozenset(
    {*INT_RANGES, "BigIntegerField", "PositiveBigIntegerField", "AutoField", "BigAutoField"}
    | {"SmallAutoField"}
)


def key_rule(name: str, key: models.Field[Any, Any]) -> Converter:
    """The rule of a primary key, or of a reference to one (key: the referenced key)."""
    kind = key.get_internal_type()
    if kind in INTEGER_KINDS:
        return id_rule(name)
    if isinstance(key, models.UUIDField):
        return uuid_rule(name)
    if isinstance(key, (models.CharField, models.TextField)):
        return text_rule(name, key.max_length or 1_000_000)
    raise TypeError(f"{key.model.__name__}.{key.attname}: no loading rule for a {kind} key")


def _required_rule(field: models.Field[Any, Any]) -> Converter:
    """The rule of field's value, when one is given."""
    name = field.attname
    kind = field.get_internal_type()
    if field.primary_key:
        return key_rule(name, field)
    if isinstance(field, CrossDatabaseReference):
        return key_rule(name, field.target_field)
    if isinstance(field, models.EmailField):
        return text_rule(
            name, field.max_length or 1_000_000, EMAIL_RE, "a valid email address", visible=True
        )
    if isinstance(field, (models.CharField, models.TextField)):
        return text_rule(name, field.max_length or 1_000_000)
    if isinstance(field, models.DecimalField):
        positive = any(isinstance(v, Positive) for v in field.validators)
        return decimal_rule(name, field.decimal_places, field.max_digits, positive)
    if isinstance(field, models.BooleanField):
        return boolean_rule(name)
    if isinstance(field, models.FloatField):
        return float_rule(name, *field_bounds(field, -math.inf, math.inf))
    if isinstance(field, models.DateTimeField):  # before DateField, its base class
        return datetime_rule(name)
    if isinstance(field, models.DateField):
        return date_rule(name)
    if isinstance(field, models.UUIDField):
        return uuid_rule(name)
    if kind in INT_RANGES or kind in ("BigIntegerField", "PositiveBigIntegerField"):
        low, high = INT_RANGES.get(kind, (-(2**63), 2**63 - 1))
        return integer_rule(name, *field_bounds(field, low, high))
    raise TypeError(f"{field.model.__name__}.{name}: no loading rule for {kind}")


def _default_of(field: models.Field[Any, Any]) -> Callable[[], Any] | None:
    """What an empty value of field becomes (a callable), or None if it must be given."""
    if field.primary_key:
        return None
    if field.null:
        return lambda: None
    if field.has_default():
        return field.get_default
    if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
        from django.utils import timezone

        return timezone.now if isinstance(field, models.DateTimeField) else timezone.localdate
    if field.blank and isinstance(field, (models.CharField, models.TextField)):
        return str
    return None


def rule_for(field: models.Field[Any, Any]) -> Converter:
    """Return the converter for one input field of a model."""
    rule = _required_rule(field)
    default = _default_of(field)
    return rule if default is None else optional(rule, default)


def may_be_left_out(field: models.Field[Any, Any]) -> bool:
    """Whether a file may lack field's column (its rows then take the empty value's)."""
    return _default_of(field) is not None


NO_PROBLEMS: tuple[Problem, ...] = ()


def collect(
    values: Sequence[Any], converters: Sequence[Converter], names: Sequence[str]
) -> tuple[tuple[Any, ...], Sequence[Problem]]:
    """Apply every converter; return (cleaned tuple, problems), naming each bad field."""
    cleaned: list[Any] = []
    problems: Sequence[Problem] = NO_PROBLEMS
    for value, convert in zip(values, converters, strict=True):
        try:
            cleaned.append(convert(value))
        except Invalid as exc:
            if not isinstance(problems, list):  # NO_PROBLEMS
                problems = []  # allocated only for bad rows
            problems.append(Problem(exc.field, exc.message))
            cleaned.append(None)
    return tuple(cleaned), problems


def parent_problem(
    field: str, noun: str, pk: Any, *, rejected_in_run: bool = False, deleted: bool = False
) -> Problem:
    """Say why a reference cannot be followed."""
    if rejected_in_run:
        return Problem(field, f"{noun} {pk} was rejected in this run")
    if deleted:
        return Problem(field, f"{noun} {pk} was deleted while this load ran")
    return Problem(field, f"{noun} {pk} does not exist")


def raise_for(problems: Sequence[Problem]) -> None:
    """Turn validation problems into a Django ValidationError keyed by field."""
    if problems:
        errors: dict[str, list[str]] = {}
        for problem in problems:
            errors.setdefault(problem.field or "__all__", []).append(problem.message)
        raise ValidationError(errors)
