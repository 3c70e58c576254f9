"""The rules a row must pass before it is written: one set, used by ``insert_data`` and the admin.

Pure functions, no database access: each ``clean_*`` takes the raw values of one row (strings
from a CSV file, JSON values, or Python values from a form) and returns the cleaned row, in
the column order of the table, and the list of problems. A problem names the field and the
value so a person can fix the input (``quantity must be at least 1 (got -1)``).

Rules that need other rows (unique emails, existing users and products) live in
``core.pipeline.RunValidator``, which calls ``parent_problems`` here for the wording.
"""

import math
import re
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

NAME_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254
PRICE_MAX = Decimal("9999999999.99")  # DecimalField(max_digits=12, decimal_places=2)
CENT = Decimal("0.01")
ID_MAX = 2**63 - 1  # BigIntegerField, on SQLite and PostgreSQL
QUANTITY_MAX = 2**31 - 1  # IntegerField (32 bits on PostgreSQL)
# Deliberately simple: one "@", no spaces, a dot in the domain. Django's EmailValidator is
# stricter but ten times slower, which matters at a million rows.
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")


class Problem(NamedTuple):
    field: str | None
    message: str


class Invalid(ValueError):
    """A field value that breaks a rule; carries the field name for the Problem."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field
        self.message = message


def shown(value):
    """Render a raw value for a message: strings quoted, everything else as written."""
    if isinstance(value, str):
        if not _is_valid_text(value):
            return repr(value.encode("utf-8", "surrogateescape"))
        return repr(value)
    return str(value)


def _is_valid_text(value):
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes survive reading as lone surrogates
        return False
    return True


def _is_blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def to_int(value, field):
    """Return value as an int, accepting ints and whole-number strings only."""
    if type(value) is int:
        return value
    if _is_blank(value):
        raise Invalid(field, f"{field} is required")
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            if not _is_valid_text(value):
                raise Invalid(field, f"{field} is not valid UTF-8 text") from None
    raise Invalid(field, f"{field} must be a whole number (got {shown(value)})")


def to_id(value, field="id"):
    number = to_int(value, field)
    if number < 1:
        raise Invalid(field, f"{field} must be a positive whole number (got {number})")
    if number > ID_MAX:
        raise Invalid(field, f"{field} must be at most {ID_MAX} (got {number})")
    return number


def _required_text(value, field):
    """Return value trimmed, if it is non-blank text that was valid UTF-8 in the input."""
    if _is_blank(value):
        raise Invalid(field, f"{field} is required")
    if not isinstance(value, str):
        raise Invalid(field, f"{field} must be text (got {shown(value)})")
    if not _is_valid_text(value):
        raise Invalid(field, f"{field} is not valid UTF-8 text")
    return value.strip()


def to_name(value, field="name"):
    name = _required_text(value, field)
    if len(name) > NAME_MAX_LENGTH:
        raise Invalid(field, f"{field} is longer than {NAME_MAX_LENGTH} characters")
    return name


def to_email(value, field="email"):
    email = _required_text(value, field)
    if len(email) > EMAIL_MAX_LENGTH or not EMAIL_RE.fullmatch(email):
        raise Invalid(field, f"{field} is not a valid email address (got {shown(value)})")
    return email


def email_key(email):
    """Return the form in which two emails are compared: trimmed, case-insensitive."""
    return email.strip().casefold()


def to_price(value, field="price"):
    """Return a positive, finite price with at most 2 decimal places, as a Decimal."""
    if _is_blank(value):
        raise Invalid(field, f"{field} is required")
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise Invalid(field, f"{field} must be a number (got {shown(value)})")
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(field, f"{field} must be a finite number (got {shown(value)})")
    try:
        price = Decimal(value.strip() if isinstance(value, str) else str(value))
    except InvalidOperation:
        raise Invalid(field, f"{field} must be a number (got {shown(value)})") from None
    if not price.is_finite():
        raise Invalid(field, f"{field} must be a finite number (got {shown(value)})")
    if price <= 0:
        raise Invalid(field, f"{field} must be greater than 0 (got {price})")
    if price > PRICE_MAX:  # before quantize, which fails on huge exponents
        raise Invalid(field, f"{field} must be at most {PRICE_MAX} (got {shown(value)})")
    if price != price.quantize(CENT, rounding="ROUND_DOWN"):
        raise Invalid(field, f"{field} must have at most 2 decimal places (got {shown(value)})")
    return price.quantize(CENT)


def to_quantity(value, field="quantity"):
    number = to_int(value, field)
    if number < 1:
        raise Invalid(field, f"{field} must be at least 1 (got {number})")
    if number > QUANTITY_MAX:
        raise Invalid(field, f"{field} must be at most {QUANTITY_MAX} (got {number})")
    return number


NO_PROBLEMS = ()


def _clean(values, converters):
    """Apply one converter per field; collect every problem rather than stopping at the first."""
    cleaned = []
    problems = NO_PROBLEMS
    for value, convert in zip(values, converters, strict=True):
        try:
            cleaned.append(convert(value))
        except Invalid as exc:
            if problems is NO_PROBLEMS:
                problems = []  # allocated only for bad rows: a valid row carries no list
            problems.append(Problem(exc.field, exc.message))
            cleaned.append(None)
    return tuple(cleaned), problems


USER_CONVERTERS = (to_id, to_name, to_email)
PRODUCT_CONVERTERS = (to_id, to_name, to_price)
ORDER_CONVERTERS = (
    to_id,
    lambda v: to_id(v, "user_id"),
    lambda v: to_id(v, "product_id"),
    to_quantity,
)


def clean_user(values):
    """Clean (id, name, email)."""
    return _clean(values, USER_CONVERTERS)


def clean_product(values):
    """Clean (id, name, price); the price comes back as a Decimal with 2 places."""
    return _clean(values, PRODUCT_CONVERTERS)


def clean_order(values):
    """Clean (id, user_id, product_id, quantity); references are checked by the caller."""
    return _clean(values, ORDER_CONVERTERS)


def check_user(id, name, email):
    return clean_user((id, name, email))[1]


def check_product(id, name, price):
    return clean_product((id, name, price))[1]


def check_order(id, user_id, product_id, quantity):
    return clean_order((id, user_id, product_id, quantity))[1]


CLEANERS = {"users": clean_user, "products": clean_product, "orders": clean_order}


def parent_problems(
    user_id,
    product_id,
    *,
    user_exists,
    product_exists,
    user_rejected=False,
    product_rejected=False,
):
    """Say why an order's user or product cannot be referenced, if it cannot."""
    problems = []
    if user_rejected:
        problems.append(Problem("user_id", f"user {user_id} was rejected in this run"))
    elif not user_exists:
        problems.append(Problem("user_id", f"user {user_id} does not exist"))
    if product_rejected:
        problems.append(Problem("product_id", f"product {product_id} was rejected in this run"))
    elif not product_exists:
        problems.append(Problem("product_id", f"product {product_id} does not exist"))
    return problems
