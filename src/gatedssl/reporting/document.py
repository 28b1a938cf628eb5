"""The report's document: one content written as Markdown (report.md) and as one self-contained HTML page
(report.html, pictures embedded), so the two never disagree."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_NUMBER = re.compile(r"^[+-]?\d[\d.]*( ± [\d.]+)?( s| min)?$|^–$")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1,h2,h3{line-height:1.2} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.3em .6em}
th{background:#f2f2f2;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even){background:#fafafa} .scroll{overflow-x:auto}
figure{margin:1em 0} img{max-width:100%;height:auto;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
details{margin:.5em 0;border:1px solid #ddd;border-radius:4px;padding:.3em .8em} summary{cursor:pointer;font-weight:600}
"""


class Document:
    """The same content as Markdown and as HTML."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.md: list[str] = []
        self.html: list[str] = []
        self.images: set[str] = set()

    def heading(self, level: int, text: str, anchor: str | None = None) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        ident = f' id="{html.escape(anchor)}"' if anchor else ""
        self.html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]) -> None:
        if items:
            self.md.append("\n".join(f"- {i}" for i in items) + "\n")
            self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        def md_cell(c):
            return str(c).replace("|", "\\|")

        lines = ["| " + " | ".join(md_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
        self.md.append("\n".join(lines) + "\n")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td{' class=num' if _NUMBER.match(str(c)) else ''}>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self.html.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')

    def image(self, png: Path, alt: str) -> None:
        self.images.add(png.name)
        self.md.append(f"![{alt}]({png.name})\n")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'
        )

    def open_details(self, summary: str) -> None:
        self.md.append(f"#### {summary}\n")
        self.html.append(f"<details><summary>{html.escape(summary)}</summary>")

    def close_details(self) -> None:
        self.html.append("</details>")

    def write(self, title: str) -> tuple[Path, Path]:
        md_path, html_path = self.out_dir / "report.md", self.out_dir / "report.html"
        md_path.write_text("\n".join(self.md))
        page = (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(self.html) + "\n</body></html>\n"
        )
        html_path.write_text(page)
        return md_path, html_path
