"""Writers of a computed report: a self-contained HTML page and its Markdown twin.

The HTML embeds every image as a base64 data URI (it opens from disk, with no server and no
files beside it, except the linked videos); pixel-art filmstrips are scaled without blur. The
Markdown refers to the PNGs written beside it and holds nothing that changes between two
renders of the same store (no time, no absolute path), so it can be a golden file.
"""

from __future__ import annotations

import base64
import html
from urllib.parse import quote

from reports.sections import Image, Report
from reports.tables import Table, split

#: Columns of a whole-run table beyond the variant and length before it is split.
PER_TABLE = 6

CURVES_NOTE = ("Mean over seeds per variant; bands: the 95% t interval of the mean at each "
               "latent frame where at least 3 runs have a value, kept inside the measure's "
               "range; per-frame 0/1 curves: their mean in bins of whole blocks (about 24 bins "
               "over the run), the raw per-frame means as faint points; dashed: the training "
               "length; dotted: the other marks.")
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em;margin:1.4em 0 .3em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:13px}
th,td{border:1px solid #ddd;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.best{font-weight:700;background:#eef7ee}
.note{color:#555;font-size:.92em;margin:.2em 0}
.grid{display:flex;flex-wrap:wrap;gap:0 2em}
img.figure{max-width:100%;height:auto}
img.strip{image-rendering:crisp-edges;image-rendering:pixelated}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:12px}
details{margin:.2em 0}summary{cursor:pointer}
"""


# --- Markdown --------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(table: Table) -> str:
    """A GitHub-flavoured Markdown table; the best cells in bold."""
    lines = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
             "|" + "---|" * len(table.header)]
    for i, row in enumerate(table.rows):
        cells = [f"**{_md_cell(c)}**" if (i, j) in table.best and c != "—" else _md_cell(c)
                 for j, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md_link(path: str) -> str:
    return f"<{path}>" if " " in path else path


def to_markdown(report: Report) -> str:
    """The report as Markdown (images beside it, under ``figures/`` and ``filmstrips/``)."""
    out = [f"# rollbench report: `{report.experiment}`", ""]
    if report.question:
        out += [f"> {report.question}", ""]
    out += [report.summary, ""]
    out += [f"_{n}_\n" for n in report.notes]
    if report.answer:
        out += [f"## {report.answer.title}", "", f"_{report.answer.note}_", "",
                md_table(report.answer), ""]
        out += [f"![{report.pareto.alt}]({report.pareto.path})", ""] if report.pareto else []
    out += ["## Runs", "", md_table(report.runs), ""]
    if report.headline:
        out += ["## Headline: the length marks", "", report.legend, ""]
        for t in report.headline:
            out += [f"### {t.title}", "", f"_{t.note}_", "", md_table(t), ""]
    for table, note in report.worlds:
        out += [f"## {table.title}", "", note, ""]
        out += [x for t in split(table, 2, PER_TABLE) for x in (md_table(t), "")]
    if report.scalars:
        out += ["## Whole-run scalars", "", "Each run's scalar metrics over its whole length, "
                "grouped by variant and length (same legend).", ""]
        out += [x for t in split(report.scalars, 2, PER_TABLE) for x in (md_table(t), "")]
    if report.curves:
        out += ["## Curves over the rollout", "", CURVES_NOTE, ""]
        out += [f"![{i.alt}]({i.path})\n" for i in report.curves]
    if report.strips:
        out += ["## Filmstrips", "", "One seed per variant: the last frame at each length "
                "mark (nearest-neighbour upscaled).", "",
                "| variant | seed | frames | video |", "|---|---|---|---|"]
        for s in report.strips:
            img = f"![{_md_cell(s.image.alt)}]({s.image.path})" if s.image else "—"
            video = f"[video.mp4]({_md_link(s.video)})" if s.video else "—"
            out.append(f"| {_md_cell(s.variant)} | {s.seed} | {img} | {video} |")
        out.append("")
    if report.sweep:
        sw = report.sweep
        out += [f"## Sweep: study `{sw.study}`", "", f"Trials: {sw.counts}.", ""]
        for image, note in ((sw.front, sw.front_note), (sw.importances, sw.importance_note)):
            out += [f"![{image.alt}]({image.path})", ""] if image else []
            out += [f"_{note}_", ""]
        out += [f"### {sw.best.title}", "", md_table(sw.best), ""]
    out += _md_provenance(report)
    return "\n".join(out).rstrip("\n") + "\n"


def _md_provenance(report: Report) -> list[str]:
    p = report.provenance
    out = ["## Provenance", "", f"### {p.revisions.title}", "", md_table(p.revisions), "",
           f"### {p.versions.title}", "", md_table(p.versions), "", "### Configs", ""]
    if p.common:
        body = "\n".join(f"{k} = {v}" for k, v in p.common)
        out += [f"<details><summary>params common to all {len(p.configs)} runs</summary>", "",
                "```text", body, "```", "", "</details>", ""]
    out += [md_table(p.runs), ""]
    for title, card in p.cards:
        out += [f"### {title}", "", "```json", card, "```", ""]
    out += ["### Machine (where this report was rendered)", ""]
    out += [f"- {k}: {v}" for k, v in p.machine]
    return out


# --- HTML ------------------------------------------------------------------------------
def _e(text: object) -> str:
    return html.escape(str(text))


def html_table(table: Table) -> str:
    """An HTML table; the best cells get class ``best``."""
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    best = ' class="best"'
    rows = []
    for i, row in enumerate(table.rows):
        cells = "".join(
            f"<td{best if (i, j) in table.best and c != '—' else ''}>{_e(c)}</td>"
            for j, c in enumerate(row))
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def img(image: Image, cls: str = "figure") -> str:
    """An ``<img>`` with the PNG embedded as a data URI."""
    data = base64.b64encode(image.data).decode("ascii")
    return f'<img class="{cls}" alt="{_e(image.alt)}" src="data:image/png;base64,{data}">'


def _md_inline(text: str) -> str:
    """Escape, then render `code` and **bold** of the legend."""
    out = _e(text)
    parts = out.split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    b = [f"<h1>rollbench report: <code>{_e(report.experiment)}</code></h1>"]
    if report.question:
        b.append(f"<blockquote>{_e(report.question)}</blockquote>")
    b.append(f"<p>{_md_inline(report.summary)}</p>")
    b += [f'<p class="note"><i>{_e(n)}</i></p>' for n in report.notes]
    if report.answer:
        b += [f"<h2>{_e(report.answer.title)}</h2>",
              f'<p class="note">{_e(report.answer.note)}</p>', html_table(report.answer)]
        b += [img(report.pareto)] if report.pareto else []
    b += ["<h2>Runs</h2>", html_table(report.runs)]
    if report.headline:
        b += ["<h2>Headline: the length marks</h2>",
              f'<p class="note">{_md_inline(report.legend)}</p>', '<div class="grid">']
        for t in report.headline:
            b.append(f'<div><h3>{_e(t.title)}</h3><p class="note">{_e(t.note)}</p>'
                     f"{html_table(t)}</div>")
        b.append("</div>")
    for table, note in report.worlds:
        b += [f"<h2>{_e(table.title)}</h2>", f"<p>{html.escape(note)}</p>",
              *[html_table(t) for t in split(table, 2, PER_TABLE)]]
    if report.scalars:
        b += ["<h2>Whole-run scalars</h2>",
              *[html_table(t) for t in split(report.scalars, 2, PER_TABLE)]]
    if report.curves:
        b += ["<h2>Curves over the rollout</h2>", f'<p class="note">{_e(CURVES_NOTE)}</p>',
              '<div class="grid">']
        b += [f"<div>{img(i)}</div>" for i in report.curves]
        b.append("</div>")
    if report.strips:
        b += ["<h2>Filmstrips</h2>", "<table><thead><tr><th>variant</th><th>seed</th>"
              "<th>frames</th><th>video</th></tr></thead><tbody>"]
        for s in report.strips:
            frames = f"{img(s.image, 'strip')}<br>{_e(s.caption)}" if s.image else "—"
            video = f'<a href="{_e(quote(s.video))}">video.mp4</a>' if s.video else "—"
            b.append(f"<tr><td>{_e(s.variant)}</td><td>{_e(s.seed)}</td><td>{frames}</td>"
                     f"<td>{video}</td></tr>")
        b.append("</tbody></table>")
    if report.sweep:
        sw = report.sweep
        b += [f"<h2>Sweep: study <code>{_e(sw.study)}</code></h2>",
              f"<p>Trials: {_e(sw.counts)}.</p>"]
        for image, note in ((sw.front, sw.front_note), (sw.importances, sw.importance_note)):
            b += [img(image)] if image else []
            b.append(f'<p class="note"><i>{_e(note)}</i></p>')
        b += [f"<h3>{_e(sw.best.title)}</h3>", html_table(sw.best)]
    b += _html_provenance(report)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>rollbench report: {_e(report.experiment)}</title><style>{CSS}</style>"
            f"</head><body>\n" + "\n".join(b) + "\n</body></html>\n")


def _html_provenance(report: Report) -> list[str]:
    p = report.provenance
    b = ["<h2>Provenance</h2>", f"<h3>{_e(p.revisions.title)}</h3>", html_table(p.revisions),
         f"<h3>{_e(p.versions.title)}</h3>", html_table(p.versions), "<h3>Configs</h3>"]
    if p.common:
        body = "\n".join(f"{k} = {v}" for k, v in p.common)
        b.append(f"<details><summary>params common to all {len(p.configs)} runs</summary>"
                 f"<pre>{_e(body)}</pre></details>")
    b.append(html_table(p.runs))
    for label, params in p.configs:
        body = "\n".join(f"{k} = {v}" for k, v in params)
        b.append(f"<details><summary>config of {_e(label)}</summary><pre>{_e(body)}</pre>"
                 "</details>")
    for title, card in p.cards:
        b += [f"<h3>{_e(title)}</h3>", f"<pre>{_e(card)}</pre>"]
    b += ["<h3>Machine (where this report was rendered)</h3>", "<ul>"]
    b += [f"<li>{_e(k)}: {_e(v)}</li>" for k, v in p.machine]
    b.append("</ul>")
    return b
