"""The signature header's parser and the secrets a source accepts, without a server."""

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest_api.problems import ProblemError
from ingest_api.sources.webhooks import TOLERANCE_SECONDS, _parse_signature, sign
from shared.db.sources import Source

NOW = 1_800_000_000


def source(previous_until: datetime | None) -> Source:
    return Source(
        id="src_" + "a" * 22,
        tenant_id=uuid4(),
        name="crm",
        secret="whsec_new",
        previous_secret="whsec_old" if previous_until else None,
        previous_expires_at=previous_until,
        rate_per_second=None,
        rate_burst=None,
        created_at=datetime.now(UTC),
        revoked_at=None,
    )


def test_the_header_gives_its_timestamp_and_signatures_in_any_order() -> None:
    one, two = sign("a", NOW, b"{}"), sign("b", NOW, b"{}")
    assert _parse_signature(f"v1={one}, t={NOW} ,v1={two.upper()}".encode(), NOW) == (
        NOW,
        [one, two],
    )


@pytest.mark.parametrize("skew", [-TOLERANCE_SECONDS - 1, TOLERANCE_SECONDS + 1])
def test_a_timestamp_outside_the_window_either_way_is_refused(skew: int) -> None:
    with pytest.raises(ProblemError) as refused:
        _parse_signature(f"t={NOW + skew},v1={'0' * 64}".encode(), NOW)
    assert refused.value.status == 401 and "clock" in (refused.value.detail or "")
    assert _parse_signature(f"t={NOW + skew // 2},v1={'0' * 64}".encode(), NOW)[0]


_PART = st.one_of(
    st.integers(NOW - 2 * TOLERANCE_SECONDS, NOW + 2 * TOLERANCE_SECONDS).map(lambda t: f"t={t}"),
    st.text("0123456789abcdefABCDEF", min_size=63, max_size=65).map(lambda h: f"v1={h}"),
    st.text(max_size=20),
    st.text(min_size=64, max_size=64).map(lambda h: f"v1={h}"),
)
HEADERS = st.one_of(
    st.binary(max_size=2048),
    st.lists(_PART, max_size=8).map(lambda parts: ",".join(parts).encode("utf-8")),
)


@pytest.mark.parametrize(
    "header",
    ["t=\u00b2,v1=" + "0" * 64, f"t={NOW},v1=" + "\u00e9" * 64, f"t={NOW},v1=" + "0" * 63],
)
def test_odd_characters_are_a_401_not_an_error(header: str) -> None:
    with pytest.raises(ProblemError) as refused:
        _parse_signature(header.encode("latin-1"), NOW)
    assert refused.value.status == 401


@given(HEADERS)
def test_any_header_parses_within_bounds_or_is_a_401(header: bytes) -> None:
    refused: ProblemError | None = None
    try:
        timestamp, signatures = _parse_signature(header, NOW)
    except ProblemError as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 401
    else:
        assert abs(timestamp - NOW) <= TOLERANCE_SECONDS
        assert 1 <= len(signatures) <= 4 and all(len(s) == 64 and s.isascii() for s in signatures)


def test_the_previous_secret_verifies_until_its_overlap_ends() -> None:
    now = datetime.now(UTC)
    assert source(now + timedelta(hours=1)).secrets_valid_at(now) == ["whsec_new", "whsec_old"]
    assert source(now).secrets_valid_at(now) == ["whsec_new"]
    assert source(None).secrets_valid_at(now) == ["whsec_new"]
