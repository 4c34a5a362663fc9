"""Identity normalisation, property-based: same identity ⇔ same key; normalising is idempotent."""

import string

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.identity import company_key, is_valid_phone, normalize_email, normalize_phone

local = st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20).filter(
    lambda s: s[0] not in "." and s[-1] != "." and ".." not in s
)
domain = st.from_regex(r"[a-z][a-z0-9]{1,10}\.(com|org|net|io)", fullmatch=True)
emails = st.builds(lambda user, host: f"{user}@{host}", local, domain)


def respell_case(value: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if f else c.lower()
        for c, f in zip(value, flips + [False] * len(value), strict=False)
    )


@given(emails, st.lists(st.booleans(), max_size=40), st.sampled_from(["", " ", "\t", "  "]))
def test_any_spelling_of_an_email_matches_and_is_stable(
    email: str, flips: list[bool], pad: str
) -> None:
    key = normalize_email(email)
    assert normalize_email(pad + respell_case(email, flips) + pad) == key
    assert normalize_email(key) == key


@given(emails, emails)
def test_different_emails_never_match(a: str, b: str) -> None:
    if a.lower() != b.lower():
        assert normalize_email(a) != normalize_email(b)


us_numbers = st.integers(min_value=2012000000, max_value=9899999999).map(str)


def spellings(digits: str) -> list[str]:
    area, exchange, line = digits[:3], digits[3:6], digits[6:]
    return [
        digits,
        f"({area}) {exchange}-{line}",
        f"{area}.{exchange}.{line}",
        f"+1 {area} {exchange} {line}",
        f"+1-{area}-{exchange}-{line}",
        f"1{digits}",
    ]


@settings(max_examples=200)
@given(us_numbers)
def test_any_spelling_of_a_phone_matches_and_is_stable(digits: str) -> None:
    keys = {normalize_phone(s, "US") for s in spellings(digits)}
    assert len(keys) == 1
    (key,) = keys
    assert key.startswith("+") and key[1:].isdigit()
    assert normalize_phone(key, "US") == key
    assert normalize_phone(key, "GB") == key  # E.164 does not depend on the region any more


@given(us_numbers, us_numbers)
def test_different_phones_never_match(a: str, b: str) -> None:
    if a != b:
        assert normalize_phone(a, "US") != normalize_phone(b, "US")


@given(
    st.text(string.digits + " -()+.", min_size=1, max_size=25), st.sampled_from(["US", "GB", "DE"])
)
def test_phone_normalisation_is_idempotent_even_for_invalid_numbers(raw: str, region: str) -> None:
    once = normalize_phone(raw, region)
    assert normalize_phone(once, region) == once


def test_the_seed_number_matches_itself() -> None:
    assert not phonenumbers.is_valid_number(phonenumbers.parse("+1-555-1234"))
    assert (
        normalize_phone("+1-555-1234", "US") == normalize_phone("+1 555 1234", "US") == "+15551234"
    )


company_names = st.text(string.ascii_letters + " &.-", min_size=1, max_size=30).filter(str.strip)


@given(company_names, st.lists(st.booleans(), max_size=30))
def test_company_names_match_regardless_of_case_and_spacing(name: str, flips: list[bool]) -> None:
    respelled = "  " + respell_case(name, flips).replace(" ", "   ") + "\t"
    assert company_key(respelled) == company_key(name)
    assert company_key(company_key(name)) == company_key(name)


@given(company_names, company_names)
def test_different_company_names_never_match(a: str, b: str) -> None:
    if " ".join(a.lower().split()) != " ".join(b.lower().split()):
        assert company_key(a) != company_key(b)


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        ("(503) 555-0199", True),
        ("+44 20 7946 0958", True),  # valid with its own country code, whatever the region
        ("000-000-0000", False),
        ("1234567890", False),
        ("111 111 1111", False),
        ("+1-555-1234", False),  # the seed's number: accepted, but no identity
        ("not a number", False),
    ],
)
def test_only_numbers_valid_for_the_region_are_valid_phones(raw: str, valid: bool) -> None:
    assert is_valid_phone(raw, "US") is valid
