"""Escaping for every string the app did not write itself: class, layer, domain, experiment and run
names, tag values, URL parameters and error texts.

Panel's `Markdown` and `Alert` panes render raw HTML found in their Markdown, `HTML` panes render it
all, and Markdown turns ``[x](javascript:…)`` into a link: a class folder named ``<img src=x
onerror=…>`` would run as script. So each such string passes through one of these where it is put
into a pane: `escape_html` for HTML, `escape_md` (or `md_code`) for Markdown, `message_md` for a
message that quotes commands between backticks. Bokeh glyph text, titles, tooltips (``@field``
values) and Tabulator's plain cells escape on their own.

`rests_on` is the one wording of how many instances a view rests on (each tab's caption line).
"""

from __future__ import annotations

import html
import re

__all__ = ["escape_html", "escape_md", "md_code", "message_md", "rests_on", "shorten"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # a newline could start a Markdown block (a heading, a list)
# Characters with an inline meaning in Markdown-it and Panel's plugins: escapes, code, emphasis,
# links and images, raw HTML and entities, tables, strikethrough, math, attributes, footnotes.
_INLINE = re.compile(r"([\\`*_\[\](){}<>&!|~$^#])")
_LEADING = re.compile(r"^(\s*)([-+=])|^(\s*\d+)([.)])")  # a list item or heading when it starts a line


def escape_html(value) -> str:
    """``value`` as text inside HTML (element content or a quoted attribute)."""
    return html.escape(str(value), quote=True)


def escape_md(value) -> str:
    """``value`` shown literally inside Markdown: control characters become spaces and every
    character with a Markdown or HTML meaning is backslash-escaped (CommonMark: any ASCII punctuation
    may be), so no tag, link, emphasis or block structure comes out of it."""
    text = _INLINE.sub(r"\\\1", _CONTROL.sub(" ", str(value)))
    return _LEADING.sub(lambda m: f"{m[1]}\\{m[2]}" if m[2] else f"{m[3]}\\{m[4]}", text)


def md_code(value) -> str:
    """``value`` as a Markdown code span: shown literally, whatever backticks or HTML it holds (a code
    span's fence is longer than any run of backticks inside it, and its content is never parsed)."""
    text = _CONTROL.sub(" ", str(value))
    if not text:
        return ""
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[0] == "`" or text[-1] == "`" or text.startswith(" ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def message_md(message) -> str:
    """A message (an error, a hint) as Markdown: its backtick-quoted parts become code spans, the rest
    is escaped with `escape_md`; whatever the message quotes from outside stays text."""
    parts = str(message).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: it and what follows are plain text
        parts[-2:] = [parts[-2] + "`" + parts[-1]]
    return "".join(md_code(p) if i % 2 else escape_md(p) for i, p in enumerate(parts))


def shorten(value, limit: int = 120) -> str:
    """``str(value)`` cut to ``limit`` characters (with an ellipsis): a URL parameter shown back."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def rests_on(basis: str, counts, per: str | None = "class") -> str:
    """How many instances a view rests on, as plain text (escape it where rendered):
    ``"<basis>: <total> instances, <n> per <per>"``, ``"<lo>–<hi> per <per>"`` when the groups differ,
    or only the total when ``per`` is None — e.g. ``rests_on("Whole target validation set", support)``
    → ``"Whole target validation set: 180 instances, 16–20 per class"``.

    Args:
        basis: what the instances are.
        counts: the number of instances in each group (class; class, domain and split; domain), or one
            number with ``per=None``.
    """
    values = [int(c) for c in (counts if hasattr(counts, "__iter__") else [counts])]
    total = sum(values)
    text = f"{basis}: {total:,} instance{'' if total == 1 else 's'}"
    if per is None or not values:
        return text
    lo, hi = min(values), max(values)
    return f"{text}, {lo:,} per {per}" if lo == hi else f"{text}, {lo:,}–{hi:,} per {per}"
