"""Generated sections of Markdown files: text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""

from __future__ import annotations

from pathlib import Path

from timm_sage._atomic import atomic_write_text


def write_between_markers(markdown: Path, body: str, name: str) -> None:
    """Replace the section ``name`` of ``markdown`` with ``body`` (appending it if absent), atomically."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    markdown = Path(markdown)
    text = markdown.read_text() if markdown.is_file() else ""
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    atomic_write_text(markdown, text)


def read_between_markers(markdown: Path, name: str) -> str | None:
    """The body of section ``name`` of ``markdown``, or None when it has none."""
    text = Path(markdown).read_text() if Path(markdown).is_file() else ""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
