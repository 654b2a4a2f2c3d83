"""Run reports: metric plots (matplotlib, headless) for report.md / report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_metrics(rows: list[dict[str, Any]], keys: list[str], out: Path, title: str = "") -> Path | None:
    """One small panel per metric that was logged; returns the PNG path (None when nothing to plot)."""
    present = [k for k in keys if any(k in r for r in rows)]
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(present))
    nrows = -(-len(present) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, present):
        pts = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, linewidth=1.2)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- HTML ----------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;
color:#1d2330;line-height:1.45}
h1{font-size:1.7em;border-bottom:2px solid #dde3ea;padding-bottom:6px}h2{font-size:1.3em;margin-top:1.8em;
border-bottom:1px solid #e5e9ef;padding-bottom:4px}h3{font-size:1.1em}
table{border-collapse:collapse;margin:10px 0;font-size:.92em}th,td{border:1px solid #d5dbe3;padding:4px 9px;
text-align:left;vertical-align:top}th{background:#f1f4f8}tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;height:auto;border:1px solid #e5e9ef;margin:8px 0}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:.85em;border-radius:4px}
code{background:#f1f4f8;padding:1px 4px;border-radius:3px;font-size:.92em}pre code{background:none;padding:0}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}.card{border:1px solid #d5dbe3;border-radius:6px;
padding:8px 12px;min-width:150px;background:#fbfcfd}.card .k{font-size:.78em;color:#5b6677}
.card .v{font-size:1.25em;font-weight:600}
"""


def _inline(text: str) -> str:
    import html
    import re

    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return out


def _image(src: str, alt: str, base: Path) -> str:
    import base64
    import html

    path = (base / src).resolve()
    if path.is_file():
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
    return f"<p><i>(missing figure: {html.escape(src)})</i></p>"


def markdown_to_html(md: str, base: Path, title: str, cards: list[tuple[str, str]] | None = None) -> str:
    """The subset of Markdown our reports use (headings, paragraphs, pipe tables, images, fenced code, lists) as
    one self-contained HTML page: every figure is embedded, so the file can be mailed or opened anywhere."""
    import html
    import re

    lines = md.splitlines()
    out: list[str] = []
    i = 0
    para: list[str] = []

    def flush():
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        img = re.fullmatch(r"\s*!\[([^\]]*)\]\(([^)]+)\)\s*", line)
        if line.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre><code>" + html.escape("\n".join(lines[i + 1: j])) + "</code></pre>")
            i = j + 1
            continue
        if re.match(r"#{1,4} ", line):
            flush()
            level = len(line.split(" ")[0])
            out.append(f"<h{level}>{_inline(line[level + 1:])}</h{level}>")
        elif img:
            flush()
            out.append(_image(img.group(2), img.group(1), base))
        elif line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|?", lines[i + 1].strip()):
            flush()
            header = [c.strip() for c in line.strip().strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                       + "</table>")
            continue
        elif re.match(r"\s*[-*] ", line):
            flush()
            items = []
            while i < len(lines) and re.match(r"\s*[-*] ", lines[i]):
                items.append(re.sub(r"^\s*[-*] ", "", lines[i]))
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in items) + "</ul>")
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line.strip())
        i += 1
    flush()
    card_html = ""
    if cards:
        card_html = '<div class="cards">' + "".join(
            f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div></div>'
            for k, v in cards) + "</div>"
    body = "\n".join(out)
    if card_html and "</h1>" in body:
        body = body.replace("</h1>", "</h1>" + card_html, 1)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{body}</body></html>")
