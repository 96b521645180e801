"""The report's document model: what it says, in order, with no format. `render` writes it as markdown
and as HTML, so both carry the same facts.

A document is a title and sections; a section holds blocks (paragraphs, bullet lists, tables, figures)
and may hold sections of its own (a hypothesis's verdict under "Verdicts"). All text is plain: each
renderer escapes it for its format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Paragraph:
    """One paragraph. role: a presentation hint ("answer": the paragraph the reader reads first)."""

    text: str
    role: str = ""


@dataclass(frozen=True)
class BulletList:
    """Items, one line each; `empty` is shown as the only item when there are none ("" shows nothing)."""

    items: tuple[str, ...]
    empty: str = ""


@dataclass(frozen=True)
class Table:
    """A header row and body rows of the same width, all cells text."""

    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        bad = [i for i, r in enumerate(self.rows) if len(r) != len(self.head)]
        if bad:
            raise ValueError(f"table rows {bad} do not have the header's {len(self.head)} cells")


@dataclass(frozen=True)
class Figure:
    """A PNG the report shows: markdown links it (beside report.md), HTML embeds it."""

    path: Path

    @property
    def alt(self) -> str:
        return self.path.stem


@dataclass(frozen=True)
class Section:
    """A titled part. mark: a word the title ends with, set off (a verdict: "SUPPORTED")."""

    title: str
    blocks: tuple["Block", ...]
    mark: str = ""


Block = Union[Paragraph, BulletList, Table, Figure, Section]


@dataclass(frozen=True)
class Document:
    title: str
    sections: tuple[Section, ...]
