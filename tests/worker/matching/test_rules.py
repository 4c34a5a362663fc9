"""The matching and merge rules of DESIGN.md, on `Plan` alone: no database, no connection.

Each test builds what `load` would have found under the batch's locks (a `Found`) by hand,
plans events against it, and reads the decisions and the rows the plan would write.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.contract.queues import Envelope
from shared.db.tables import events_t
from shared.identity import company_key
from tests.support.messages import envelope
from worker.errors import EventFailedError, PoisonEventError
from worker.matching.load import CompanyRow, Found, PersonRow
from worker.matching.parse import ParsedEvent, parse
from worker.matching.rules import Plan

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
T = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER = uuid.UUID("00000000-0000-4000-8000-000000000002")
ANN, BOB, CID = uuid.UUID(int=0xA), uuid.UUID(int=0xB), uuid.UUID(int=0xD)
ACME = uuid.UUID(int=0xC)
ANON = {"visitorId": "v-anonymous"}


def event(payload: dict[str, Any], tenant: uuid.UUID = T, **extra: Any) -> ParsedEvent:
    return parse(envelope(tenant, {"type": "page_view", **payload}, **extra), "US")


def person(id: uuid.UUID, *, age_days: int = 1, tenant: uuid.UUID = T, **fields: Any) -> PersonRow:
    values: dict[str, Any] = {
        "first_name": None,
        "last_name": None,
        "tags": [],
        "source": None,
        "stage": None,
        "company_id": None,
        "external_id": None,
        "has_primary_email": False,
        "has_primary_phone": False,
        **fields,
    }
    return PersonRow(id=id, tenant_id=tenant, created_at=NOW - timedelta(days=age_days), **values)


def company(id: uuid.UUID, name: str, *, tenant: uuid.UUID = T, **fields: Any) -> CompanyRow:
    values: dict[str, Any] = {
        "website": None,
        "industry": None,
        "company_size": None,
        "description": None,
        **fields,
    }
    return CompanyRow(id=id, tenant_id=tenant, name=name, name_key=company_key(name), **values)


def planned(found: Found, *events: ParsedEvent) -> Plan:
    plan = Plan(found, NOW)
    plan.decide(events, [])
    return plan


def row_of(plan: Plan, item: ParsedEvent) -> dict[str, Any]:
    (row,) = [r for r in plan.event_rows if r["id"] == item.envelope.id]
    return row


def failure_of(plan: Plan, item: ParsedEvent) -> str:
    (row,) = [r for r in plan.dead_rows if r["event_id"] == item.envelope.id]
    return str(row["reason"])


def new_people(plan: Plan) -> list[uuid.UUID]:
    return [p.id for p in plan.people.values() if p.new]


# personId ------------------------------------------------------------------------------------


def test_a_person_id_that_exists_in_the_tenant_is_the_person() -> None:
    item = event({"personId": str(ANN)})
    plan = planned(Found(people={ANN: person(ANN)}), item)
    row = row_of(plan, item)
    assert (row["person_id"], row["was_person_created"]) == (ANN, False)
    assert plan.created == 1 and not plan.dead_rows


def test_an_unknown_person_id_fails_the_event_with_person_not_found() -> None:
    item = event({"personId": str(ANN), "person": {"emails": ["ann@example.com"]}})
    plan = planned(Found(), item)
    assert failure_of(plan, item) == "person_not_found"
    assert not plan.event_rows and not plan.people and not plan.new_emails
    assert plan.answers == {item.envelope.id: item.envelope.id}


def test_another_tenants_person_is_not_found() -> None:
    item = event({"personId": str(ANN)})
    plan = planned(Found(people={ANN: person(ANN, tenant=OTHER)}), item)
    assert failure_of(plan, item) == "person_not_found"
    assert not plan.event_rows


# Matching ------------------------------------------------------------------------------------


def test_a_matching_email_is_the_person_whatever_its_case() -> None:
    item = event({"person": {"emails": ["Ann@Example.COM"]}})
    found = Found(email_owner={(T, "ann@example.com"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, item)
    assert row_of(plan, item)["person_id"] == ANN
    assert not new_people(plan) and not plan.new_emails


def test_an_email_in_another_tenant_matches_nobody() -> None:
    item = event({"person": {"emails": ["ann@example.com"]}})
    found = Found(email_owner={(OTHER, "ann@example.com"): ANN}, people={})
    plan = planned(found, item)
    assert row_of(plan, item)["person_id"] != ANN
    assert row_of(plan, item)["was_person_created"] is True


def test_the_primary_email_wins_over_an_older_match() -> None:
    item = event(
        {
            "person": {
                "emails": [
                    {"value": "ann@example.com"},
                    {"value": "bob@example.com", "isPrimary": True},
                ]
            }
        }
    )
    found = Found(
        email_owner={(T, "ann@example.com"): ANN, (T, "bob@example.com"): BOB},
        people={ANN: person(ANN, age_days=10), BOB: person(BOB, age_days=1)},
    )
    plan = planned(found, item)
    assert row_of(plan, item)["person_id"] == BOB
    assert row_of(plan, item)["match_conflict"] == [str(ANN)]


def test_without_a_primary_match_the_oldest_matching_person_wins() -> None:
    # The event's primary (first) e-mail belongs to nobody; the oldest owner is neither the
    # first nor the last match.
    emails = ["new@example.com", "bob@example.com", "ann@example.com", "cid@example.com"]
    item = event({"person": {"emails": emails}})
    found = Found(
        email_owner={
            (T, "ann@example.com"): ANN,
            (T, "bob@example.com"): BOB,
            (T, "cid@example.com"): CID,
        },
        people={
            ANN: person(ANN, age_days=10),
            BOB: person(BOB, age_days=1),
            CID: person(CID, age_days=5),
        },
    )
    plan = planned(found, item)
    assert row_of(plan, item)["person_id"] == ANN
    assert row_of(plan, item)["match_conflict"] == sorted([str(BOB), str(CID)])
    # The unclaimed e-mail joins the chosen person; the others' stay with their owners.
    assert [(r["value"], r["person_id"]) for r in plan.new_emails] == [("new@example.com", ANN)]
    assert plan.email_owner[(T, "bob@example.com")] == BOB


def test_a_phone_matches_when_no_email_does() -> None:
    item = event({"person": {"emails": ["new@example.com"], "phones": ["(503) 555-0199"]}})
    found = Found(phone_owner={(T, "+15035550199"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, item)
    assert row_of(plan, item)["person_id"] == ANN
    assert [r["value"] for r in plan.new_emails] == ["new@example.com"]


def test_an_email_match_wins_over_a_phone_match_and_steals_nothing() -> None:
    item = event({"person": {"emails": ["ann@example.com"], "phones": ["+44 20 7946 0958"]}})
    found = Found(
        email_owner={(T, "ann@example.com"): ANN},
        phone_owner={(T, "+442079460958"): BOB},
        # Bob is older: the e-mail still wins, since phones are only looked at without one.
        people={ANN: person(ANN, age_days=1), BOB: person(BOB, age_days=10)},
    )
    plan = planned(found, item)
    row = row_of(plan, item)
    assert row["person_id"] == ANN and row["match_conflict"] == [str(BOB)]
    assert not plan.new_phones and plan.phone_owner[(T, "+442079460958")] == BOB
    assert not plan.people[BOB].dirty


def test_a_known_visitor_is_the_person_when_no_identity_matches() -> None:
    item = event({"visitorId": "vis-1"})
    found = Found(visitor_person={(T, "vis-1"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, item)
    assert row_of(plan, item)["person_id"] == ANN
    assert plan.visitor_rows[(T, "vis-1")]["person_id"] == ANN


def test_an_identified_visitor_is_tied_to_its_person() -> None:
    item = event({"visitorId": "vis-2", "person": {"emails": ["ann@example.com"]}})
    found = Found(email_owner={(T, "ann@example.com"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, item)
    assert plan.visitor_rows == {
        (T, "vis-2"): {"tenant_id": T, "visitor_id": "vis-2", "person_id": ANN, "updated_at": NOW}
    }


def test_a_person_is_created_when_nothing_matches() -> None:
    item = event({"person": {"firstName": "Ann", "emails": ["ann@example.com"]}})
    plan = planned(Found(), item)
    (created,) = new_people(plan)
    row = row_of(plan, item)
    assert (row["person_id"], row["was_person_created"]) == (created, True)
    assert plan.people[created].first_name == "Ann"
    assert plan.new_emails == [
        {
            "tenant_id": T,
            "value": "ann@example.com",
            "person_id": created,
            "type": None,
            "is_primary": True,
            "created_at": NOW,
        }
    ]


def test_a_name_alone_is_enough_to_create_a_person() -> None:
    item = event({"person": {"lastName": "Only-a-name"}})
    plan = planned(Found(), item)
    assert len(new_people(plan)) == 1 and row_of(plan, item)["was_person_created"] is True


@pytest.mark.parametrize(
    "payload", [{"visitorId": "anon"}, {"visitorId": "anon", "person": {"tags": ["t"]}}]
)
def test_no_person_without_an_identity(payload: dict[str, Any]) -> None:
    item = event(payload)
    plan = planned(Found(), item)
    row = row_of(plan, item)
    assert row["person_id"] is None and row["was_person_created"] is False
    assert not plan.people and not plan.visitor_rows and not plan.new_emails


# External ids --------------------------------------------------------------------------------


def test_an_external_id_is_the_person_and_wins_over_an_email_match() -> None:
    item = event({"person": {"externalId": "user-1", "emails": ["bob@example.com"]}})
    found = Found(
        external_owner={(T, "user-1"): ANN},
        email_owner={(T, "bob@example.com"): BOB},
        people={ANN: person(ANN, external_id="user-1"), BOB: person(BOB, age_days=10)},
    )
    plan = planned(found, item)
    row = row_of(plan, item)
    assert (row["person_id"], row["match_conflict"]) == (ANN, [str(BOB)])
    assert not new_people(plan) and not plan.new_external_ids and not plan.new_emails


def test_an_external_id_matches_case_sensitively_and_only_in_its_tenant() -> None:
    found = Found(
        external_owner={(T, "user-1"): ANN, (OTHER, "user-2"): BOB},
        people={ANN: person(ANN, external_id="user-1"), BOB: person(BOB, tenant=OTHER)},
    )
    upper, foreign = (
        event({"person": {"externalId": "USER-1"}}),
        event({"person": {"externalId": "user-2"}}),
    )
    plan = planned(found, upper, foreign)
    assert row_of(plan, upper)["was_person_created"] is True
    assert row_of(plan, foreign)["was_person_created"] is True
    assert len(new_people(plan)) == 2


def test_an_external_id_is_attached_to_the_email_match_without_one() -> None:
    item = event({"person": {"externalId": "user-1", "emails": ["ann@example.com"]}})
    found = Found(email_owner={(T, "ann@example.com"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, item)
    row = row_of(plan, item)
    assert (row["person_id"], row["was_person_created"], row["match_conflict"]) == (
        ANN,
        False,
        None,
    )
    assert plan.new_external_ids == [
        {"tenant_id": T, "value": "user-1", "person_id": ANN, "created_at": NOW}
    ]
    assert plan.people[ANN].external_id == "user-1" and plan.people[ANN].dirty


def test_an_email_of_another_external_id_makes_a_new_person_and_a_conflict() -> None:
    item = event({"person": {"externalId": "user-2", "emails": ["ann@example.com"]}})
    found = Found(
        external_owner={(T, "user-1"): ANN},
        email_owner={(T, "ann@example.com"): ANN},
        people={ANN: person(ANN, external_id="user-1")},
    )
    plan = planned(found, item)
    (created,) = new_people(plan)
    row = row_of(plan, item)
    assert (row["person_id"], row["was_person_created"]) == (created, True)
    assert row["match_conflict"] == [str(ANN)]
    # Nothing is merged or stolen: Ann keeps her e-mail and her external id.
    assert not plan.new_emails and plan.email_owner[(T, "ann@example.com")] == ANN
    assert plan.new_external_ids == [
        {"tenant_id": T, "value": "user-2", "person_id": created, "created_at": NOW}
    ]
    assert plan.people[ANN].external_id == "user-1" and not plan.people[ANN].dirty


def test_a_visitor_of_another_external_id_makes_a_new_person_who_takes_the_visitor() -> None:
    item = event({"visitorId": "shared-browser", "person": {"externalId": "user-2"}})
    found = Found(
        external_owner={(T, "user-1"): ANN},
        visitor_person={(T, "shared-browser"): ANN},
        people={ANN: person(ANN, external_id="user-1")},
    )
    plan = planned(found, item)
    (created,) = new_people(plan)
    assert row_of(plan, item)["person_id"] == created
    assert plan.visitor_rows[(T, "shared-browser")]["person_id"] == created


def test_an_external_id_alone_creates_its_person_once_per_batch() -> None:
    first, second = (event({"person": {"externalId": "user-1"}}) for _ in range(2))
    plan = planned(Found(), first, second)
    (created,) = new_people(plan)
    assert [row_of(plan, i)["person_id"] for i in (first, second)] == [created, created]
    assert [row_of(plan, i)["was_person_created"] for i in (first, second)] == [True, False]
    assert plan.new_external_ids == [
        {"tenant_id": T, "value": "user-1", "person_id": created, "created_at": NOW}
    ]


def test_a_person_id_keeps_its_own_external_id_and_names_the_other_owner() -> None:
    item = event({"personId": str(ANN), "person": {"externalId": "user-2"}})
    found = Found(
        external_owner={(T, "user-1"): ANN, (T, "user-2"): BOB},
        people={ANN: person(ANN, external_id="user-1"), BOB: person(BOB)},
    )
    plan = planned(found, item)
    row = row_of(plan, item)
    assert (row["person_id"], row["match_conflict"]) == (ANN, [str(BOB)])
    assert not plan.new_external_ids and plan.people[ANN].external_id == "user-1"


def test_in_one_batch_a_second_external_id_for_an_email_is_another_person() -> None:
    # The first event gives Ann an external id; the second, with another, must not merge.
    first = event({"person": {"externalId": "user-1", "emails": ["ann@example.com"]}})
    second = event({"person": {"externalId": "user-2", "emails": ["ann@example.com"]}})
    found = Found(email_owner={(T, "ann@example.com"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, first, second)
    (created,) = new_people(plan)
    assert row_of(plan, first)["person_id"] == ANN
    assert (row_of(plan, second)["person_id"], row_of(plan, second)["match_conflict"]) == (
        created,
        [str(ANN)],
    )
    assert [(r["value"], r["person_id"]) for r in plan.new_external_ids] == [
        ("user-1", ANN),
        ("user-2", created),
    ]


# Merging -------------------------------------------------------------------------------------


def test_a_merge_adds_identities_fills_blanks_merges_tags_and_overwrites_nothing() -> None:
    item = event(
        {
            "person": {
                "firstName": "Annie",
                "lastName": "Lee",
                "source": "web",
                "emails": ["ann@example.com", "ann@work.example"],
                "phones": ["(503) 555-0199"],
                "tags": ["buyer", "vip", "vip"],
            }
        }
    )
    found = Found(
        email_owner={(T, "ann@example.com"): ANN},
        people={
            ANN: person(ANN, first_name="Ann", stage="lead", tags=["buyer"], has_primary_email=True)
        },
    )
    plan = planned(found, item)
    ann = plan.people[ANN]
    assert (ann.first_name, ann.last_name, ann.source, ann.stage) == ("Ann", "Lee", "web", "lead")
    assert ann.tags == ["buyer", "vip"]
    assert ann.dirty and not ann.new
    # An existing primary is kept: the new e-mail is not primary; the first phone is.
    assert [(r["value"], r["is_primary"]) for r in plan.new_emails] == [("ann@work.example", False)]
    assert [(r["value"], r["is_primary"]) for r in plan.new_phones] == [("+15035550199", True)]
    assert found.people[ANN].first_name == "Ann" and found.email_owner == {
        (T, "ann@example.com"): ANN
    }  # what was found is left as it was


def test_a_merge_that_changes_nothing_leaves_the_person_clean() -> None:
    item = event({"person": {"firstName": "Other", "emails": ["ann@example.com"], "tags": ["a"]}})
    found = Found(
        email_owner={(T, "ann@example.com"): ANN},
        people={ANN: person(ANN, first_name="Ann", tags=["a"], has_primary_email=True)},
    )
    plan = planned(found, item)
    assert not plan.people[ANN].dirty and plan.people[ANN].first_name == "Ann"


def test_string_arrays_make_the_first_email_and_first_phone_primary() -> None:
    item = event(
        {
            "person": {
                "emails": ["first@example.com", "second@example.com"],
                "phones": ["+15035550100", "+15035550101"],
            }
        }
    )
    plan = planned(Found(), item)
    assert [(r["value"], r["is_primary"]) for r in plan.new_emails] == [
        ("first@example.com", True),
        ("second@example.com", False),
    ]
    assert [(r["value"], r["is_primary"]) for r in plan.new_phones] == [
        ("+15035550100", True),
        ("+15035550101", False),
    ]


def test_an_existing_primary_is_not_replaced_by_a_marked_one() -> None:
    item = event(
        {
            "person": {"emails": [{"value": "x@example.com", "isPrimary": True}]},
            "personId": str(ANN),
        }
    )
    found = Found(people={ANN: person(ANN, has_primary_email=True)})
    plan = planned(found, item)
    assert [(r["value"], r["is_primary"]) for r in plan.new_emails] == [("x@example.com", False)]


# Companies -----------------------------------------------------------------------------------


def test_a_company_id_in_the_tenant_is_the_company_and_the_person_is_linked() -> None:
    item = event({"person": {"emails": ["ann@example.com"]}, "company": {"id": str(ACME)}})
    found = Found(
        email_owner={(T, "ann@example.com"): ANN},
        people={ANN: person(ANN)},
        companies={ACME: company(ACME, "Acme")},
    )
    plan = planned(found, item)
    row = row_of(plan, item)
    assert (row["company_id"], row["was_company_created"]) == (ACME, False)
    assert plan.people[ANN].company_id == ACME and plan.people[ANN].dirty


@pytest.mark.parametrize("owner", [None, OTHER])
def test_an_unknown_company_id_fails_the_event_before_anything_is_planned(
    owner: uuid.UUID | None,
) -> None:
    companies = {ACME: company(ACME, "Acme", tenant=owner)} if owner else {}
    item = event({"person": {"emails": ["new@example.com"]}, "company": {"id": str(ACME)}})
    plan = planned(Found(companies=companies), item)
    assert failure_of(plan, item) == "company_not_found"
    assert not plan.event_rows and not new_people(plan) and not plan.new_emails


def test_a_company_name_matches_case_insensitively_and_trimmed() -> None:
    item = event({"visitorId": "v", "company": {"name": "  ACME   inc "}})
    plan = planned(Found(companies={ACME: company(ACME, "Acme Inc")}), item)
    row = row_of(plan, item)
    assert (row["company_id"], row["was_company_created"]) == (ACME, False)
    assert not [c for c in plan.companies.values() if c.new]


def test_an_unknown_company_name_creates_the_company_with_its_spaces_folded() -> None:
    item = event({"visitorId": "v", "company": {"name": "  Globex   Corp ", "industry": "Energy"}})
    plan = planned(Found(), item)
    (created,) = [c for c in plan.companies.values() if c.new]
    assert (created.name, created.name_key, created.industry) == (
        "Globex Corp",
        "globex corp",
        "Energy",
    )
    row = row_of(plan, item)
    assert (row["company_id"], row["was_company_created"]) == (created.id, True)


def test_empty_company_fields_are_filled_and_set_ones_are_not_overwritten() -> None:
    item = event(
        {
            **ANON,
            "company": {
                "name": "acme",
                "website": "https://acme.example",
                "industry": "New",
                "companySize": "11-50",
            },
        }
    )
    plan = planned(Found(companies={ACME: company(ACME, "Acme", industry="Old")}), item)
    acme = plan.companies[ACME]
    assert (acme.website, acme.industry, acme.company_size) == (
        "https://acme.example",
        "Old",
        "11-50",
    )
    assert acme.dirty and not acme.new


def test_two_events_creating_one_person_and_company_make_one_row_each() -> None:
    first = event({"person": {"emails": ["same@example.com"]}, "company": {"name": "Globex"}})
    second = event(
        {
            "person": {"emails": ["SAME@example.com"], "lastName": "Lee"},
            "company": {"name": "globex "},
        }
    )
    plan = planned(Found(), first, second)
    (created,) = new_people(plan)
    (firm,) = [c for c in plan.companies.values() if c.new]
    assert len(plan.new_emails) == 1
    assert [(r["person_id"], r["company_id"]) for r in plan.event_rows] == [(created, firm.id)] * 2
    assert [(r["was_person_created"], r["was_company_created"]) for r in plan.event_rows] == [
        (True, True),
        (False, False),
    ]
    assert plan.people[created].last_name == "Lee"
    assert plan.people[created].company_id == firm.id


# Replays and failures ------------------------------------------------------------------------


def test_an_event_already_decided_is_a_replay_answered_by_itself() -> None:
    item = event({"person": {"emails": ["ann@example.com"]}})
    plan = planned(Found(decided=frozenset({item.envelope.id})), item)
    assert plan.answers == {item.envelope.id: item.envelope.id}
    assert (plan.created, plan.replayed) == (0, 1)
    assert not plan.event_rows and not plan.people


def test_an_idempotency_key_seen_before_is_answered_by_its_first_event() -> None:
    earlier = uuid.uuid4()
    item = event(ANON, idempotency_key="k-1")
    plan = planned(Found(first_by_key={(T, "k-1"): earlier}), item)
    assert plan.answers == {item.envelope.id: earlier}
    assert (plan.created, plan.replayed) == (0, 1) and not plan.event_rows


def test_an_idempotency_key_repeated_in_one_batch_keeps_the_first_event() -> None:
    first, again = event(ANON, idempotency_key="k-2"), event(ANON, idempotency_key="k-2")
    other_tenant = event(ANON, tenant=OTHER, idempotency_key="k-2")
    plan = planned(Found(), first, again, other_tenant)
    assert plan.answers[again.envelope.id] == first.envelope.id
    assert [r["id"] for r in plan.event_rows] == [first.envelope.id, other_tenant.envelope.id]
    assert [(r["tenant_id"], r["key"]) for r in plan.idem_rows] == [(T, "k-2"), (OTHER, "k-2")]
    assert (plan.created, plan.replayed) == (2, 1)


def test_a_failure_becomes_a_storable_dead_letter_once() -> None:
    # A dead letter keeps the envelope as it came, even one the schema refuses.
    failed = Envelope(id=uuid.uuid4(), tenant_id=T, received_at=NOW, payload={"message": "nul\x00"})
    decided = envelope(T, {"type": "page_view", **ANON})
    error = EventFailedError("invalid_payload", 422, "Invalid payload", "unreadable")
    plan = Plan(Found(decided=frozenset({decided.id})), NOW)
    plan.decide([], [(failed, error), (decided, error)])
    (dead,) = plan.dead_rows
    assert dead["event_id"] == failed.id and dead["reason"] == "invalid_payload"
    assert dead["problem"]["status"] == 422 and dead["problem"]["eventId"] == str(failed.id)
    assert dead["problem"]["type"].endswith("/invalid-payload")
    assert dead["envelope"]["payload"]["message"] == "nul\ufffd"
    assert plan.answers == {failed.id: failed.id, decided.id: decided.id}


def test_an_unexpected_error_names_its_event() -> None:
    # An owner that was not locked (a bug in loading) cannot be planned against.
    item = event({"person": {"emails": ["ann@example.com"]}})
    with pytest.raises(PoisonEventError) as caught:
        planned(Found(email_owner={(T, "ann@example.com"): ANN}), item)
    assert caught.value.event_id == item.envelope.id


def test_an_event_row_has_every_column_of_the_events_table() -> None:
    item = event({"person": {"emails": ["ann@example.com"]}, "company": {"name": "Acme"}})
    assert set(row_of(planned(Found(), item), item)) == set(events_t.columns.keys())


def test_an_event_row_keeps_the_clients_clock_as_sent_and_marks_a_bot() -> None:
    # The clock rule itself: tests/worker/matching/test_clock.py; bots: test_bots.py.
    sent = datetime.now(UTC) - timedelta(hours=2)
    item = event(
        {
            **ANON,
            "userAgent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "occurredAt": (sent - timedelta(minutes=1)).isoformat(),
            "sentAt": sent.isoformat(),
        }
    )
    row = row_of(planned(Found(), item), item)
    assert (row["bot"], row["clock_adjustment"]) == (True, "corrected")
    assert (row["client_occurred_at"], row["sent_at"]) == (sent - timedelta(minutes=1), sent)
    assert row["occurred_at"] == item.envelope.received_at - timedelta(minutes=1)

    plain = event(ANON)
    row = row_of(planned(Found(), plain), plain)
    assert (row["bot"], row["client_occurred_at"], row["sent_at"]) == (False, None, None)
    assert (row["occurred_at"], row["clock_adjustment"]) == (plain.envelope.received_at, None)


# Unverified phones (not valid for the tenant's region) -----------------------------------------

PLACEHOLDERS = ["000-000-0000", "(000) 000-0000", "1234567890", "111 111 1111", "+1-555-1234"]


@pytest.mark.parametrize("raw", PLACEHOLDERS)
def test_a_placeholder_phone_is_unverified_and_no_identity(raw: str) -> None:
    item = event({"person": {"emails": ["mallory@evil.example"], "phones": [raw, "503 555 0199"]}})
    assert [c.value for c in item.phones] == ["+15035550199"]
    (unverified,) = item.unverified_phones
    assert not unverified.is_primary


def test_a_number_valid_only_with_its_country_code_is_an_identity() -> None:
    # Not a US number, but valid as written with +44: an identity key in a US tenant.
    item = event({"person": {"phones": ["+44 20 7946 0958"]}})
    assert [c.value for c in item.phones] == ["+442079460958"] and not item.unverified_phones


def test_an_unverified_phone_never_matches_nor_merges_strangers() -> None:
    # Alice owns the junk number as far as any table could say; Mallory still gets her own
    # person, takes nothing of Alice's and is not told about her (no conflict either).
    mallory = event(
        {
            "person": {
                "firstName": "Mallory",
                "emails": ["m@evil.example"],
                "phones": ["(000) 000-0000"],
            }
        }
    )
    found = Found(phone_owner={(T, "+10000000000"): ANN}, people={ANN: person(ANN)})
    plan = planned(found, mallory)
    (created,) = new_people(plan)
    row = row_of(plan, mallory)
    assert created != ANN and row["person_id"] == created and row["match_conflict"] is None
    assert not plan.people[ANN].dirty and not plan.new_phones
    assert plan.new_unverified_phones == [
        {
            "person_id": created,
            "value": "+10000000000",
            "tenant_id": T,
            "type": None,
            "created_at": NOW,
        }
    ]


def test_only_an_unverified_phone_creates_a_person_each_time() -> None:
    first = event({"person": {"phones": ["000-000-0000"]}})
    second = event({"person": {"phones": ["000 000 0000"]}})
    plan = planned(Found(), first, second)
    assert len(new_people(plan)) == 2
    assert row_of(plan, first)["person_id"] != row_of(plan, second)["person_id"]
    assert not plan.phone_owner and not plan.new_phones
    assert len(plan.new_unverified_phones) == 2


def test_an_unverified_phone_is_planned_once_per_person_in_a_batch() -> None:
    again = [
        event({"person": {"emails": ["ann@example.com"], "phones": ["1234567890"]}})
        for _ in range(2)
    ]
    plan = planned(
        Found(email_owner={(T, "ann@example.com"): ANN}, people={ANN: person(ANN)}), *again
    )
    assert [(r["person_id"], r["value"]) for r in plan.new_unverified_phones] == [
        (ANN, "+11234567890")
    ]
