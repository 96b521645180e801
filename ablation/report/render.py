"""One document, two formats: markdown (report.md, figures linked) and HTML (report.html, one
self-contained file with the figures embedded). Each walks the same blocks in the same order, so the
two carry the same facts; only the markup differs.
"""
from __future__ import annotations

import base64
import html

from .document import Block, BulletList, Document, Figure, Paragraph, Section, Table

HTML_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
              "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
              ".answer{font-size:16px;background:#f4f8ff;padding:10px}.w{color:#124}img{max-width:100%}")


# ----------------------------------------------------------------------------- markdown

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")   # a bar inside a cell would end it


def _md_block(b: Block, level: int) -> list[str]:
    """The lines of one block (no blank line after it)."""
    if isinstance(b, Paragraph):
        return [b.text]
    if isinstance(b, BulletList):
        return [f"- {x}" for x in b.items] or ([f"- {b.empty}"] if b.empty else [])
    if isinstance(b, Table):
        return (["| " + " | ".join(map(_md_cell, b.head)) + " |", "|" + "---|" * len(b.head)]
                + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows])
    if isinstance(b, Figure):
        return [f"![{b.alt}]({b.path.name})"]
    if isinstance(b, Section):
        title = b.title + (f" — **{b.mark}**" if b.mark else "")
        out = [f"{'#' * level} {title}"]
        for inner in b.blocks:
            lines = _md_block(inner, level + 1)
            if lines:
                out += [""] + lines
        return out
    raise TypeError(f"no markdown for {type(b).__name__}")


def to_markdown(doc: Document) -> str:
    lines = [f"# {doc.title}"]
    for s in doc.sections:
        lines += [""] + _md_block(s, 2)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- HTML

def _img(fig: Figure) -> str:
    b64 = base64.b64encode(fig.path.read_bytes()).decode()
    return f'<img alt="{html.escape(fig.alt)}" src="data:image/png;base64,{b64}">'


def _html_block(b: Block, level: int) -> str:
    e = html.escape
    if isinstance(b, Paragraph):
        return f"<p class='{e(b.role)}'>{e(b.text)}</p>" if b.role else f"<p>{e(b.text)}</p>"
    if isinstance(b, BulletList):
        items = b.items or ((b.empty,) if b.empty else ())
        return "<ul>" + "".join(f"<li>{e(x)}</li>" for x in items) + "</ul>" if items else ""
    if isinstance(b, Table):
        head = "".join(f"<th>{e(c)}</th>" for c in b.head)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        return _img(b)
    if isinstance(b, Section):
        mark = f" — <span class='w'>{e(b.mark)}</span>" if b.mark else ""
        parts = [_html_block(inner, level + 1) for inner in b.blocks]
        return "\n".join([f"<h{level}>{e(b.title)}{mark}</h{level}>"] + [x for x in parts if x])
    raise TypeError(f"no HTML for {type(b).__name__}")


def to_html(doc: Document) -> str:
    body = "\n".join([f"<h1>{html.escape(doc.title)}</h1>"] + [_html_block(s, 2) for s in doc.sections])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(doc.title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>{body}</body></html>\n")
