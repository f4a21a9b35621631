"""`report.md` → a self-contained `report.html`: every PNG embedded as a base64 data URI, one
inline style sheet, no scripts and no external resources.

Converts the Markdown subset the report writes: `#`/`##` headings, paragraphs, `- ` bullet
lists, pipe tables, images `![alt](file.png)`, links (a link to a `.png` becomes an embedded
figure, other links stay relative links to the result files), `**bold**` and `` `code` ``.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 78em; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.5em; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
figure { margin: 0.5em 0; } figcaption { font-size: 0.8em; color: #555; }
code { background: #f4f4f4; padding: 0 0.2em; }
strong.supports { color: #1a7f37; } strong.contradicts { color: #b42318; }
strong.inconclusive { color: #7a5c00; }
"""

_IMG = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def _data_uri(root: Path, target: str) -> str | None:
    path = root / target
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(root: Path, alt: str, target: str) -> str:
    uri = _data_uri(root, target)
    if uri is None:
        return f"<em>(figure {html.escape(target)} missing)</em>"
    return (f'<figure><img alt="{html.escape(alt)}" src="{uri}">'
            f"<figcaption>{html.escape(target)}</figcaption></figure>")


def inline(text: str, root: Path) -> str:
    """Inline Markdown → HTML (escapes everything else)."""
    out, pos = [], 0
    pattern = re.compile(r"!\[[^\]]*\]\([^)]+\)|\[[^\]]+\]\([^)]+\)")
    for m in pattern.finditer(text):
        out.append(_plain(text[pos:m.start()]))
        token = m.group(0)
        img = _IMG.fullmatch(token)
        if img:
            out.append(_figure(root, img.group(1), img.group(2)))
        else:
            link = _LINK.fullmatch(token)
            label, target = link.group(1), link.group(2)
            out.append(_figure(root, label, target) if target.endswith(".png") else
                       f'<a href="{html.escape(target)}">{_plain(label)}</a>')
        pos = m.end()
    out.append(_plain(text[pos:]))
    return "".join(out)


def _plain(text: str) -> str:
    t = html.escape(text, quote=False)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)

    def bold(m: re.Match) -> str:
        word = m.group(1)
        cls = f' class="{word}"' if word in ("supports", "contradicts", "inconclusive") else ""
        return f"<strong{cls}>{word}</strong>"

    return re.sub(r"\*\*([^*]+)\*\*", bold, t)


def _table(lines: list[str], root: Path) -> str:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    head, body = rows[0], [r for r in rows[2:]]
    out = ["<table><thead><tr>" + "".join(f"<th>{inline(c, root)}</th>" for c in head)
           + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{inline(c, root)}</td>" for c in r) + "</tr>" for r in body]
    return "\n".join(out) + "</tbody></table>"


def markdown_to_html(md: str, root: str | Path, *, title: str = "report") -> str:
    """The HTML page of `md`, figures resolved relative to `root` and embedded."""
    root = Path(root)
    blocks: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            blocks.append(f"<h{level}>{inline(line[level:].strip(), root)}</h{level}>")
            i += 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j], root))
            i = j
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:], root)}</li>")
                i += 1
            blocks.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while (i < len(lines) and lines[i].strip()
                   and not lines[i].startswith(("#", "|", "- "))):
                para.append(lines[i])
                i += 1
            blocks.append(f"<p>{inline(' '.join(para), root)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(blocks) + "\n</body></html>\n")
