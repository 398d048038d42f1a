"""One table renderer for every table the study writes: the leaderboard, the report's tables,
the MLP ablation and the seed repeats, as Markdown, HTML or fixed-width text. Callers give
cells as text (each table decides how its numbers read); numeric columns align right."""

from __future__ import annotations

import html as _html
from typing import Any, Sequence

Row = Sequence[Any]


def markdown(head: Sequence[str], body: Sequence[Row], numeric: set[int] = frozenset()) -> str:
    """A GitHub-flavoured Markdown table; a '|' inside a cell is escaped."""
    cell = lambda value: str(value).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in head) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def html(head: Sequence[str], body: Sequence[Row], numeric: set[int] = frozenset(),
         row_classes: Sequence[str] | None = None, table_class: str = "") -> str:
    """An HTML table, every cell escaped; `row_classes` mark rows for the stylesheet."""
    th = "".join(f"<th>{_html.escape(str(h))}</th>" for h in head)
    rows = []
    for i, row in enumerate(body):
        cls = row_classes[i] if row_classes else ""
        tds = "".join(('<td class="num">' if j in numeric else "<td>")
                      + f"{_html.escape(str(c))}</td>" for j, c in enumerate(row))
        rows.append((f'<tr class="{cls}">' if cls else "<tr>") + tds + "</tr>")
    open_tag = f'<table class="{table_class}">' if table_class else "<table>"
    return f"{open_tag}<thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def text(head: Sequence[str], body: Sequence[Row], numeric: set[int] = frozenset()) -> str:
    """A fixed-width table for the terminal, a rule under the header."""
    table = [[str(h) for h in head]] + [[str(c) for c in row] for row in body]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(v.rjust(w) if i in numeric else v.ljust(w)
                       for i, (v, w) in enumerate(zip(line, widths))).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
