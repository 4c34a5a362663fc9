"""SELECT lists described once, as column name -> SQL, so rows are read by name."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

Getter = Callable[[Sequence[Any]], tuple[Any, ...]]


@dataclass(frozen=True)
class SelectList:
    """A SELECT list described once, as column name -> SQL; rows are read by these names."""

    columns: dict[str, str]

    @property
    def sql(self) -> str:
        return ", ".join(self.columns.values())

    def get(self, *names: str, start: int = 0) -> Getter:
        """The named columns' values of a row in which this list starts at `start`, in the
        order named (one C call per row, however many columns)."""
        order = list(self.columns)
        pick = itemgetter(*(start + order.index(name) for name in names))
        return pick if len(names) > 1 else lambda row: (pick(row),)


def columns(alias: str, *names: str) -> dict[str, str]:
    return {name: f"{alias}.{name}" for name in names}


def contacts_of(table: str) -> str:
    # Primary first, then oldest: the order a person's contact points are shown in.
    order = "x.is_primary DESC, x.created_at, x.value"
    points = f"array_agg(ROW(x.value, x.type, x.is_primary) ORDER BY {order})"
    return f"(SELECT {points} FROM {table} x WHERE x.person_id = p.id)"  # noqa: S608 (a constant table name)
