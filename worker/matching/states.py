"""People and companies as a plan leaves them: what `rules` decides and `write` stores."""

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from worker.matching.load import CompanyRow, PersonRow


@dataclass
class PersonState:
    """A person as the plan leaves it: `new` is to be inserted, `dirty` to be updated."""

    id: UUID
    tenant_id: UUID
    created_at: datetime
    first_name: str | None = None
    last_name: str | None = None
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    stage: str | None = None
    company_id: UUID | None = None
    external_id: str | None = None
    has_primary_email: bool = False
    has_primary_phone: bool = False
    new: bool = False
    dirty: bool = False

    @classmethod
    def of(cls, row: PersonRow) -> "PersonState":
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            created_at=row.created_at,
            first_name=row.first_name,
            last_name=row.last_name,
            tags=list(row.tags),
            source=row.source,
            stage=row.stage,
            company_id=row.company_id,
            external_id=row.external_id,
            has_primary_email=row.has_primary_email,
            has_primary_phone=row.has_primary_phone,
        )


@dataclass
class CompanyState:
    """A company as the plan leaves it: `new` is to be inserted, `dirty` to be updated."""

    id: UUID
    tenant_id: UUID
    name: str
    name_key: str
    website: str | None = None
    industry: str | None = None
    company_size: str | None = None
    description: str | None = None
    new: bool = False
    dirty: bool = False

    @classmethod
    def of(cls, row: CompanyRow) -> "CompanyState":
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            name=row.name,
            name_key=row.name_key,
            website=row.website,
            industry=row.industry,
            company_size=row.company_size,
            description=row.description,
        )
