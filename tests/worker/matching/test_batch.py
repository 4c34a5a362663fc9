"""Matching rules and batch semantics, on real PostgreSQL with committing connections."""

import asyncio
import uuid
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.contract.outcomes import StoredOutcome
from shared.contract.queues import Envelope
from shared.db.tables import Event, Person, PersonEmail, PersonExternalId, PersonPhone
from shared.settings import Settings
from tests.support.messages import envelope, totals
from tests.support.tenants import Tenant, make_tenant
from worker.unit_of_work import commit_batch


async def run(engine: AsyncEngine, envelopes: list[Envelope]) -> dict[uuid.UUID, StoredOutcome]:
    return (await commit_batch(engine, envelopes)).outcomes


async def one(engine: AsyncEngine, tenant: Tenant, payload: dict[str, Any]) -> StoredOutcome:
    e = envelope(tenant.id, payload)
    return (await run(engine, [e]))[e.id]


async def emails_of(engine: AsyncEngine, person_id: str) -> dict[str, bool]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(PersonEmail.value, PersonEmail.is_primary).where(
                PersonEmail.person_id == uuid.UUID(person_id)
            )
        )
        return {r.value: r.is_primary for r in rows}


async def test_merge_adds_identities_fills_blanks_and_never_overwrites(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    first = await one(
        engine,
        tenant,
        {
            "type": "form_submission",
            "person": {"firstName": "Ann", "emails": ["ann@example.com"], "tags": ["buyer"]},
        },
    )
    person_id = first.body["person"]["id"]
    merged = await one(
        engine,
        tenant,
        {
            "type": "page_view",
            "person": {
                "firstName": "Annie",
                "lastName": "Lee",
                "emails": ["ANN@example.com", "ann@work.example"],
                "phones": ["(503) 555-0199"],
                "tags": ["buyer", "vip"],
            },
        },
    )
    person = merged.body["person"]
    assert person["id"] == person_id and merged.http_status == 200
    assert (person["firstName"], person["lastName"]) == ("Ann", "Lee")  # filled, not overwritten
    assert person["tags"] == ["buyer", "vip"]
    assert await emails_of(engine, person_id) == {
        "ann@example.com": True,
        "ann@work.example": False,
    }
    assert person["phones"] == [{"value": "+15035550199", "isPrimary": True}]


async def test_identities_of_two_people_attach_to_the_email_match_and_steal_nothing(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    by_email = await one(engine, tenant, {"type": "x", "person": {"emails": ["p1@example.com"]}})
    by_phone = await one(engine, tenant, {"type": "x", "person": {"phones": ["+442079460958"]}})
    both = await one(
        engine,
        tenant,
        {"type": "x", "person": {"emails": ["p1@example.com"], "phones": ["+44 20 7946 0958"]}},
    )
    p1, p2 = by_email.body["person"]["id"], by_phone.body["person"]["id"]
    assert both.body["person"]["id"] == p1
    assert both.body["matchConflict"] == {"otherPersonIds": [p2]}
    assert both.body["person"]["phones"] == []  # the phone stays with its owner
    async with engine.connect() as conn:
        owner = (
            await conn.execute(
                select(PersonPhone.person_id).where(
                    PersonPhone.tenant_id == tenant.id, PersonPhone.value == "+442079460958"
                )
            )
        ).scalar_one()
    assert str(owner) == p2


async def test_primary_email_wins_then_the_oldest_match(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    older = await one(engine, tenant, {"type": "x", "person": {"emails": ["old@example.com"]}})
    newer = await one(engine, tenant, {"type": "x", "person": {"emails": ["new@example.com"]}})
    marked = await one(
        engine,
        tenant,
        {
            "type": "x",
            "person": {
                "emails": [
                    {"value": "old@example.com"},
                    {"value": "new@example.com", "isPrimary": True},
                ]
            },
        },
    )
    assert marked.body["person"]["id"] == newer.body["person"]["id"]
    unmarked = await one(
        engine,
        tenant,
        {
            "type": "x",
            "person": {"emails": ["missing@example.com", "new@example.com", "old@example.com"]},
        },
    )
    # The event's primary (first) e-mail matches nobody: the oldest matching person wins.
    assert unmarked.body["person"]["id"] == older.body["person"]["id"]


async def test_anonymous_events_attach_once_the_visitor_is_identified(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    anonymous = [
        await one(engine, tenant, {"type": "page_view", "visitorId": "vis-1"}) for _ in range(3)
    ]
    assert all("person" not in o.body for o in anonymous)
    identified = await one(
        engine,
        tenant,
        {
            "type": "form_submission",
            "visitorId": "vis-1",
            "person": {"emails": ["vis@example.com"]},
        },
    )
    later = await one(engine, tenant, {"type": "page_view", "visitorId": "vis-1"})
    person_id = identified.body["person"]["id"]
    assert later.body["person"]["id"] == person_id
    async with engine.connect() as conn:
        owners = set(
            (
                await conn.execute(select(Event.person_id).where(Event.tenant_id == tenant.id))
            ).scalars()
        )
    assert owners == {uuid.UUID(person_id)}


async def test_unknown_company_id_fails_the_event_with_404(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    outcome = await one(
        engine,
        tenant,
        {
            "type": "x",
            "person": {"emails": ["c@example.com"]},
            "company": {"id": str(uuid.uuid4())},
        },
    )
    assert outcome.status == "failed" and outcome.http_status == 404
    assert outcome.body["type"].endswith("/company-not-found")
    assert await totals(engine, tenant.id) == {
        "events": 0,
        "people": 0,
        "emails": 0,
        "companies": 0,
    }


SCENARIO = [
    {"type": "page_view", "visitorId": "s-v"},
    {
        "type": "form_submission",
        "person": {"firstName": "Sam", "emails": ["sam@example.com"]},
        "company": {"name": "Initech"},
    },
    {"type": "page_view", "person": {"emails": ["SAM@example.com"], "phones": ["+15035550100"]}},
    {
        "type": "form_submission",
        "visitorId": "s-v",
        "person": {"emails": ["sam@example.com"]},
        "company": {"name": "initech "},
    },
    {"type": "inquiry", "person": {"lastName": "Only-a-name"}},
    {"type": "page_view", "personId": str(uuid.UUID(int=1))},  # not found: fails alone
]


async def _state(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[str, Any]:
    async with engine.connect() as conn:
        people = {
            r.value: r.person_id
            for r in await conn.execute(
                select(PersonEmail.value, PersonEmail.person_id).where(
                    PersonEmail.tenant_id == tenant_id
                )
            )
        }
        anonymous = (
            await conn.execute(
                select(Event.id).where(Event.tenant_id == tenant_id, Event.person_id.is_(None))
            )
        ).all()
    return {
        **await totals(engine, tenant_id),
        "anonymous": len(anonymous),
        "people_by_email": len(set(people.values())),
    }


async def test_one_batch_gives_the_same_result_as_one_event_at_a_time(
    engine: AsyncEngine, settings: Settings
) -> None:
    single, batched = await make_tenant(engine, settings), await make_tenant(engine, settings)
    single_outcomes = [await one(engine, single, p) for p in SCENARIO]
    envelopes = [envelope(batched.id, p) for p in SCENARIO]
    duplicate = envelopes[1]
    batch_outcomes = await run(engine, [*envelopes, duplicate])  # a duplicate inside the batch
    again = await run(engine, envelopes)  # and the whole batch redelivered

    assert (
        await _state(engine, single.id)
        == await _state(engine, batched.id)
        == {
            "events": 5,
            "people": 2,
            "emails": 1,
            "companies": 1,
            "anonymous": 0,
            "people_by_email": 1,
        }
    )
    statuses = [(o.status, o.http_status) for o in single_outcomes]
    assert [
        (batch_outcomes[e.id].status, batch_outcomes[e.id].http_status) for e in envelopes
    ] == statuses
    assert statuses == [
        ("processed", 200),
        ("processed", 201),
        ("processed", 200),
        ("processed", 200),
        ("processed", 201),
        ("failed", 404),
    ]
    assert again == batch_outcomes  # a redelivery answers exactly as the first delivery


async def _deadlocks(engine: AsyncEngine) -> int:
    """Deadlocks PostgreSQL has detected in the test database so far."""
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
        return int(found.scalar_one())


async def test_batches_in_opposite_orders_do_not_deadlock(
    settings: Settings, engine: AsyncEngine, tenant: Tenant
) -> None:
    # commit_batch reruns a batch that deadlocked, so only PostgreSQL's own count can tell.
    # The batches get an engine of their own, whose connections are known and can be made to
    # report their statistics before the count is read.
    own = create_async_engine(settings.database_url, pool_size=2, max_overflow=0)
    rounds = 8
    people = [f"d{i}@example.com" for i in range(20)]
    phones = [f"+1503555{1000 + i}" for i in range(20)]
    seed = [
        envelope(tenant.id, {"type": "x", "person": {"emails": [e], "phones": [p]}})
        for e, p in zip(people, phones, strict=True)
    ]
    try:
        await run(own, seed)
        before = await _deadlocks(engine)
        for _ in range(rounds):
            forward = [
                envelope(
                    tenant.id,
                    {"type": "x", "person": {"emails": [e]}, "company": {"name": f"Co {i % 3}"}},
                )
                for i, e in enumerate(people)
            ]
            backward = [
                envelope(
                    tenant.id,
                    {
                        "type": "x",
                        "person": {"phones": [p], "tags": ["t"]},
                        "company": {"name": f"co {i % 3}"},
                    },
                )
                for i, p in reversed(list(enumerate(phones)))
            ]
            results = await asyncio.gather(run(own, forward), run(own, backward))
            assert all(o.status == "processed" for r in results for o in r.values())
        # A backend reports its counts when idle, at most once a second unless told to.
        async with own.connect() as first, own.connect() as second:
            for conn in (first, second):
                await conn.execute(text("SELECT pg_stat_force_next_flush()"))
                await conn.commit()
    finally:
        await own.dispose()
    assert await _deadlocks(engine) == before
    assert await totals(engine, tenant.id) == {
        "events": 20 + rounds * 40,
        "people": 20,
        "emails": 20,
        "companies": 3,
    }
    async with engine.connect() as conn:
        tagged = (
            (await conn.execute(select(Person.tags).where(Person.tenant_id == tenant.id)))
            .scalars()
            .all()
        )
    assert all(t == ["t"] for t in tagged)


async def test_two_new_external_ids_racing_for_one_person_leave_it_one(
    engine: AsyncEngine, tenant: Tenant
) -> None:
    # Ann is matched by her e-mail in one event and by her phone in the other: no advisory lock
    # is shared, only her row's. Whichever commits first gives her its external id; the other
    # (rerun if it raced past the row lock) sees it, and makes a person of its own.
    for i in range(5):
        email, phone = f"ann{i}@example.com", f"+1503555{2000 + i}"
        seed = await one(
            engine, tenant, {"type": "x", "person": {"emails": [email], "phones": [phone]}}
        )
        ann = seed.body["person"]["id"]
        by_email = envelope(
            tenant.id, {"type": "x", "person": {"externalId": f"a-{i}", "emails": [email]}}
        )
        by_phone = envelope(
            tenant.id, {"type": "x", "person": {"externalId": f"b-{i}", "phones": [phone]}}
        )
        first, second = await asyncio.gather(run(engine, [by_email]), run(engine, [by_phone]))
        outcomes = [first[by_email.id], second[by_phone.id]]
        assert [o.status for o in outcomes] == ["processed", "processed"]
        kept = [o for o in outcomes if o.body["person"]["id"] == ann]
        apart = [o for o in outcomes if o.body["person"]["id"] != ann]
        assert len(kept) == len(apart) == 1
        assert apart[0].body["wasPersonCreated"] is True
        assert apart[0].body["matchConflict"] == {"otherPersonIds": [ann]}
        assert kept[0].body["person"]["externalId"] != apart[0].body["person"]["externalId"]
        async with engine.connect() as conn:
            owned = (
                (
                    await conn.execute(
                        select(PersonExternalId.value).where(
                            PersonExternalId.person_id == uuid.UUID(ann)
                        )
                    )
                )
                .scalars()
                .all()
            )
        assert owned == [kept[0].body["person"]["externalId"]]
