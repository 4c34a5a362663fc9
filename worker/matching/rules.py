"""The matching and merge rules of DESIGN.md, applied in memory: no SQL, no connection, no I/O.

A Plan starts from what `load` found under the batch's locks, decides every event (a replay,
a failure, or a new event row with its person and company resolved), and accumulates the rows
that `write` then stores, one statement per table.
"""

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from shared.contract.queues import Envelope
from shared.ids import new_id
from worker.errors import EventFailedError, PoisonEventError
from worker.matching.bots import is_bot
from worker.matching.clock import event_time
from worker.matching.load import Found, Owners
from worker.matching.parse import Contact, ParsedEvent
from worker.matching.states import CompanyState, PersonState


class Plan:
    """The in-memory plan of one batch: what was found, then what to write."""

    def __init__(self, found: Found, now: datetime) -> None:
        self.now = now
        self.decided = set(found.decided)
        self.first_by_key = dict(found.first_by_key)
        self.external_owner = dict(found.external_owner)
        self.email_owner = dict(found.email_owner)
        self.phone_owner = dict(found.phone_owner)
        self.visitor_person = dict(found.visitor_person)
        self.people = {i: PersonState.of(row) for i, row in found.people.items()}
        self.companies = {i: CompanyState.of(row) for i, row in found.companies.items()}
        self.company_by_key = {(c.tenant_id, c.name_key): c.id for c in self.companies.values()}
        # Rows to write.
        self.new_external_ids: list[dict[str, Any]] = []
        self.new_emails: list[dict[str, Any]] = []
        self.new_phones: list[dict[str, Any]] = []
        # Unverified phones are rows of their person only (never owned, never matched).
        self.new_unverified_phones: list[dict[str, Any]] = []
        self._unverified_planned: set[tuple[UUID, str]] = set()
        self.visitor_rows: dict[tuple[UUID, str], dict[str, Any]] = {}
        self.event_rows: list[dict[str, Any]] = []
        self.idem_rows: list[dict[str, Any]] = []
        self.dead_rows: list[dict[str, Any]] = []
        # Each event id -> the event whose outcome answers it; what became of the events.
        self.answers: dict[UUID, UUID] = {}
        self.created = self.replayed = 0

    def decide(
        self,
        events: Iterable[ParsedEvent],
        failures: Iterable[tuple[Envelope, EventFailedError]],
    ) -> None:
        """Decide every event of the batch: a failure, a replay, or a new event row.

        Raises PoisonEventError when planning an event fails unexpectedly: the plan may then
        be half-changed, and the caller reruns the batch without that event.
        """
        for envelope, error in failures:
            if envelope.id not in self.decided:
                self.add_failure(envelope, error)
                self.decided.add(envelope.id)
            self.answers[envelope.id] = envelope.id
        for item in events:
            env = item.envelope
            key = (item.tenant_id, env.idempotency_key) if env.idempotency_key else None
            first = self.first_by_key.get(key) if key else None
            if env.id in self.decided:
                self.replayed += 1
                self.answers[env.id] = env.id
            elif first is not None and first != env.id:
                self.replayed += 1
                self.answers[env.id] = first
            else:
                try:
                    self.add_event(item)
                    self.created += 1
                except EventFailedError as exc:
                    self.add_failure(env, exc)
                except Exception as exc:
                    raise PoisonEventError(env.id, exc) from exc
                self.decided.add(env.id)
                if key:
                    self.first_by_key[key] = env.id
                self.answers[env.id] = env.id

    # People --------------------------------------------------------------------------------

    def _oldest(self, ids: Iterable[UUID]) -> PersonState:
        return min((self.people[i] for i in ids), key=lambda p: (p.created_at, str(p.id)))

    def best_match(self, item: ParsedEvent, contacts: list[Contact], owners: Owners) -> UUID | None:
        """The owner of the event's primary contact if it has one, else the oldest owner."""
        found = [
            owners[(item.tenant_id, c.value)]
            for c in contacts
            if (item.tenant_id, c.value) in owners
        ]
        if not found:
            return None
        primary = next((c for c in contacts if c.is_primary), None)
        if primary and (item.tenant_id, primary.value) in owners:
            return owners[(item.tenant_id, primary.value)]
        return self._oldest(found).id

    def resolve_person(self, item: ParsedEvent) -> tuple[PersonState | None, bool, list[UUID]]:
        """The event's person (existing, matched or created), whether it was created, conflicts.

        An external id is the strongest identity after personId. A person matched otherwise who
        already has another external id is another app user: the event gets a new person.
        """
        t, e = item.tenant_id, item.event
        external_id = e.person.external_id if e.person else None
        external_owner = self.external_owner.get((t, external_id)) if external_id else None
        if e.person_id is not None:
            person = self.people.get(e.person_id)
            if person is None or person.tenant_id != t:
                raise EventFailedError(
                    "person_not_found",
                    404,
                    "Person not found",
                    f"no person {e.person_id} in this tenant",
                )
            chosen: UUID | None = person.id
        elif external_owner is not None:
            chosen = external_owner
        else:
            chosen = (
                self.best_match(item, item.emails, self.email_owner)
                or self.best_match(item, item.phones, self.phone_owner)
                or (self.visitor_person.get((t, e.visitor_id)) if e.visitor_id else None)
            )
            if external_id and chosen is not None and self.people[chosen].external_id:
                # Another app user: its e-mail or phone stays its own (a conflict, below); a
                # shared browser's visitor id moves to the new person, as for any other match.
                chosen = None
        created = False
        if chosen is None:
            if e.person is None or not e.person.has_identity():
                return None, False, []
            person = PersonState(id=new_id(), tenant_id=t, created_at=self.now, new=True)
            self.people[person.id] = person
            created = True
        else:
            person = self.people[chosen]
        others = {
            owner
            for contacts, owners in (
                (item.emails, self.email_owner),
                (item.phones, self.phone_owner),
            )
            for c in contacts
            if (owner := owners.get((t, c.value))) is not None and owner != person.id
        }
        if external_owner is not None and external_owner != person.id:  # personId named another
            others.add(external_owner)
        if e.person is not None:
            self.merge(person, item)
        return person, created, sorted(others, key=str)

    def merge(self, person: PersonState, item: ParsedEvent) -> None:
        """Add an unclaimed external id (to a person without one) and unclaimed e-mails and
        phones, fill empty fields; never overwrite or steal.

        Unverified phones are added too (an existing one is kept by the insert), but they never
        decide whom an event belongs to.
        """
        data = item.event.person
        assert data is not None
        changed = False
        if data.external_id and person.external_id is None:
            key = (person.tenant_id, data.external_id)
            if key not in self.external_owner:
                person.external_id = data.external_id
                self.external_owner[key] = person.id
                self.new_external_ids.append(
                    {
                        "tenant_id": person.tenant_id,
                        "value": data.external_id,
                        "person_id": person.id,
                        "created_at": self.now,
                    }
                )
                changed = True
        for name in ("first_name", "last_name", "source", "stage"):
            value = getattr(data, name)
            if value and getattr(person, name) is None:
                setattr(person, name, value)
                changed = True
        new_tags = [tag for tag in dict.fromkeys(data.tags) if tag not in person.tags]
        if new_tags:
            person.tags = [*person.tags, *new_tags]
            changed = True
        for contacts, owners, flag, rows in (
            (item.emails, self.email_owner, "has_primary_email", self.new_emails),
            (item.phones, self.phone_owner, "has_primary_phone", self.new_phones),
        ):
            for c in contacts:
                key = (person.tenant_id, c.value)
                if key in owners:
                    continue
                primary = c.is_primary and not getattr(person, flag)
                if primary:
                    setattr(person, flag, True)
                owners[key] = person.id
                rows.append(
                    {
                        "tenant_id": person.tenant_id,
                        "value": c.value,
                        "person_id": person.id,
                        "type": c.type,
                        "is_primary": primary,
                        "created_at": self.now,
                    }
                )
                changed = True
        for c in item.unverified_phones:
            if (person.id, c.value) not in self._unverified_planned:
                self._unverified_planned.add((person.id, c.value))
                self.new_unverified_phones.append(
                    {
                        "person_id": person.id,
                        "value": c.value,
                        "tenant_id": person.tenant_id,
                        "type": c.type,
                        "created_at": self.now,
                    }
                )
        if changed and not person.new:
            person.dirty = True

    # Companies -----------------------------------------------------------------------------

    def check_company(self, item: ParsedEvent) -> None:
        """A company named by id must exist in the event's tenant."""
        company = item.event.company
        if company is not None and company.id is not None:
            found = self.companies.get(company.id)
            if found is None or found.tenant_id != item.tenant_id:
                raise EventFailedError(
                    "company_not_found",
                    404,
                    "Company not found",
                    f"no company {company.id} in this tenant",
                )

    def resolve_company(self, item: ParsedEvent) -> tuple[CompanyState | None, bool]:
        """The event's company (by id, else by name, else created) and whether it was created."""
        data, t = item.event.company, item.tenant_id
        if data is None:
            return None, False
        created = False
        if data.id is not None:
            company = self.companies[data.id]
        elif (found := self.company_by_key.get((t, item.company_key or ""))) is not None:
            company = self.companies[found]
        else:
            assert data.name is not None and item.company_key is not None
            company = CompanyState(
                id=new_id(),
                tenant_id=t,
                name=" ".join(data.name.split()),
                name_key=item.company_key,
                new=True,
            )
            self.companies[company.id] = company
            self.company_by_key[(t, company.name_key)] = company.id
            created = True
        for name in ("website", "industry", "company_size", "description"):
            value = getattr(data, name)
            if value and getattr(company, name) is None:
                setattr(company, name, value)
                company.dirty = not company.new
        return company, created

    # Events --------------------------------------------------------------------------------

    def add_event(self, item: ParsedEvent) -> None:
        """Resolve the event's person and company and plan its row; EventFailedError if it can't."""
        env, e, t = item.envelope, item.event, item.tenant_id
        self.check_company(item)
        person, person_created, conflicts = self.resolve_person(item)
        company, company_created = self.resolve_company(item)
        if person is not None and company is not None and person.company_id != company.id:
            person.company_id = company.id
            person.dirty = not person.new
        if person is not None and e.visitor_id is not None:
            self.visitor_person[(t, e.visitor_id)] = person.id
            self.visitor_rows[(t, e.visitor_id)] = {
                "tenant_id": t,
                "visitor_id": e.visitor_id,
                "person_id": person.id,
                "updated_at": self.now,
            }
        time = event_time(occurred_at=e.occurred_at, sent_at=e.sent_at, received_at=env.received_at)
        self.event_rows.append(
            {
                "id": env.id,
                "tenant_id": t,
                "person_id": person.id if person else None,
                "company_id": company.id if company else None,
                "visitor_id": e.visitor_id,
                "event_type": e.type,
                "occurred_at": time.occurred_at,
                "received_at": env.received_at,
                "created_at": self.now,
                "idempotency_key": env.idempotency_key,
                "source": e.source,
                "page_url": e.page_url,
                "page_title": e.page_title,
                "page_referrer": e.page_referrer,
                "page_duration": e.page_duration,
                "property": _json(e.property),
                "property_search": _json(e.property_search),
                "message": e.message,
                "metadata": e.metadata,
                "ip_address": str(e.ip_address) if e.ip_address is not None else None,
                "user_agent": e.user_agent,
                "was_person_created": person_created,
                "was_company_created": company_created if company is not None else None,
                "match_conflict": [str(i) for i in conflicts] or None,
                "bot": is_bot(e.user_agent),
                "client_occurred_at": e.occurred_at,
                "sent_at": e.sent_at,
                "clock_adjustment": time.adjustment,
            }
        )
        if env.idempotency_key is not None:
            self.idem_rows.append(
                {
                    "tenant_id": t,
                    "key": env.idempotency_key,
                    "event_id": env.id,
                    "created_at": self.now,
                }
            )

    def add_failure(self, envelope: Envelope, error: EventFailedError) -> None:
        """Plan the event's dead letter (a replayed one is failed afresh)."""
        self.dead_rows.append(
            dead_letter_row(envelope.id, envelope.tenant_id, envelope.to_wire(), error, self.now)
        )


def dead_letter_row(
    event_id: UUID, tenant_id: UUID, wire: Any, error: EventFailedError, now: datetime
) -> dict[str, Any]:
    """The dead letter of an event: its failure, and its envelope as queued (`wire`)."""
    return {
        "event_id": event_id,
        "tenant_id": tenant_id,
        "reason": error.reason,
        "problem": error.problem(event_id),
        "envelope": _storable(wire),
        "failed_at": now,
        "replayed_at": None,
    }


def _storable(value: Any) -> Any:
    """PostgreSQL refuses NUL in text and JSON: keep a dead letter storable whatever it holds."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _json(model: Any) -> dict[str, Any] | None:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True) if model else None
