"""Identity normalisation: the one definition of "the same e-mail" and "the same phone"."""

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_NON_DIGITS = re.compile(r"\D")
_CANONICAL = re.compile(r"\+\d+")
MIN_PHONE_DIGITS = 4
MAX_PHONE_DIGITS = 17


class InvalidIdentityError(ValueError):
    pass


def normalize_email(raw: str) -> str:
    """Trim, check the syntax (no DNS) and lower-case the whole address."""
    candidate = raw.strip()
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidIdentityError(str(exc)) from None
    return result.normalized.lower()


def check_phone(raw: str) -> str:
    """Reject values that cannot be a phone number; the region-aware form is made by the worker."""
    digits = _NON_DIGITS.sub("", raw)
    if not MIN_PHONE_DIGITS <= len(digits) <= MAX_PHONE_DIGITS:
        raise InvalidIdentityError(
            f"a phone number needs {MIN_PHONE_DIGITS} to {MAX_PHONE_DIGITS} digits"
        )
    return raw.strip()


def normalize_phone(raw: str, region: str) -> str:
    """E.164 when phonenumbers can parse it, else '+' and the digits; idempotent.

    Numbers that parse but are not valid (the seed's `+1-555-1234`) keep phonenumbers' E.164
    spelling, so every spelling of them still matches itself. Such a spelling can parse
    differently again (a national prefix dropped, another country matched), so the result is
    normalised until it stays put: two steps at most, since '+' and digits either parse as a
    valid number, whose E.164 form is stable, or are kept as they are.
    """
    stripped = raw.strip()
    try:
        parsed = phonenumbers.parse(stripped, region)
    except phonenumbers.NumberParseException:
        candidate = "+" + _NON_DIGITS.sub("", raw)
        return candidate if candidate == stripped else normalize_phone(candidate, region)
    if phonenumbers.is_valid_number(parsed):
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if _CANONICAL.fullmatch(stripped):
        return stripped
    return normalize_phone(
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), region
    )


def is_valid_phone(raw: str, region: str) -> bool:
    """Whether the number is valid for the region, or valid with the country code it carries.

    Only valid numbers are identity keys: placeholders (`000-000-0000`, `1234567890`) and the
    seed's `+1-555-1234` are not, since many unrelated people type them.
    """
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(raw.strip(), region))
    except phonenumbers.NumberParseException:
        return False


def company_key(name: str) -> str:
    """The matching key of a company name: trimmed, inner spaces folded, case-insensitive."""
    return " ".join(name.split()).casefold()
