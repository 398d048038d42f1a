"""The report's sections as Markdown and HTML at once, and the two files they become."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from study import files, tables

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 6px;text-align:left;vertical-align:top}th{background:#f3f3f3}td.num{text-align:right}
tr.champion{background:#fff3c4}tr.same{background:#eef7ee}img{max-width:100%}figure{margin:1em 0}
figcaption{font-size:12px;color:#666}h2{border-bottom:1px solid #ddd;padding-bottom:4px}"""


class Section:
    """One section's content, written as Markdown and as HTML (images embedded as data URIs);
    `figures` lists the image files it shows, which sit beside report.md."""

    def __init__(self, title: str):
        self.title = title
        self.md: list[str] = []
        self.html: list[str] = []
        self.figures: list[Path] = []

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text).replace('**', '')}</p>")

    def table(self, head: list[str], body: list[list[Any]]) -> None:
        self.md.append(tables.markdown(head, body) + "\n")
        self.html.append(tables.html(head, body))

    def raw(self, md: str, html_text: str) -> None:
        self.md.append(md + "\n")
        self.html.append(html_text)

    def image(self, path: Path | None, alt: str) -> None:
        if path is None or not path.exists():
            self.para(f"({alt}: not available in this compare run)")
            return
        self.figures.append(path)
        self.md.append(f"![{alt}]({path.name})\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        # onload/onerror leave a mark that a headless browser check can read back from the DOM
        self.html.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" '
                         'onload="this.dataset.loaded=1" onerror="this.dataset.broken=1">'
                         f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def write(folder: Path, title: str, intro: Section, sections: list[Section]) -> tuple[Path, Path]:
    """report.md and report.html from numbered sections, each file complete or not there: a
    reader never sees half a report."""
    md = list(intro.md)
    body = list(intro.html[1:])
    toc = []
    for number, section in enumerate(sections, start=1):
        md.append(f"\n## {number}. {section.title}\n")
        md += section.md
        body.append(f'<h2 id="s{number}">{number}. {html.escape(section.title)}</h2>')
        body += section.html
        toc.append(f'<a href="#s{number}">{html.escape(section.title)}</a>')
    md_path = files.write_text(folder / "report.md", "\n".join(md).lstrip() + "\n")
    html_path = files.write_text(
        folder / "report.html",
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        + intro.html[0] + f"<nav>{' · '.join(toc)}</nav>" + "".join(body) + "</body></html>\n")
    return md_path, html_path
