"""One self-contained HTML report per evaluation, its PNG figures beside it, a JSON and a text summary.

The HTML embeds every figure as a base64 PNG, so the single file can be mailed or archived and still
shows everything. All files are written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from matplotlib.figure import Figure

from atomvae import __version__
from atomvae.errors import atomic_write_bytes, atomic_write_text

__all__ = [
    "ReportFigure",
    "ReportSection",
    "figure_png",
    "html_page",
    "write_report",
    "write_json",
    "summary_text",
]


@dataclass
class ReportFigure:
    """A figure, the file stem of its PNG, and a caption telling the reader what to look for."""

    name: str
    figure: Figure
    caption: str = ""


@dataclass
class ReportSection:
    """A heading, rows of (quantity, value) for a table, free text paragraphs, and figures."""

    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)
    html: list[str] = field(default_factory=list)  # trusted markup placed after the figures (e.g. a table)


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; } table { border-collapse: collapse; margin: 0.5em 0 1em 0; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; font-size: 0.95em; }
td.v { font-family: ui-monospace, Menlo, Consolas, monospace; } figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: 0.9em; }
"""


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(
        path, json.dumps(_finite(json.loads(json.dumps(data, default=_json_default))), indent=2) + "\n"
    )


def write_report(
    out_dir: str | Path,
    title: str,
    sections: list[ReportSection],
    summary: dict,
    inputs: list[tuple[str, str]] | None = None,
    notes: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``out_dir/report.html`` (self-contained), one PNG per figure and ``out_dir/summary.json``.

    Returns {"html": ..., "json": ..., <figure name>: png path}. Figures are closed after writing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    page, written = html_page(out_dir, title, sections, inputs, notes)
    written["html"] = out_dir / "report.html"
    atomic_write_text(written["html"], page)
    written["json"] = out_dir / "summary.json"
    write_json(written["json"], summary)
    return written


def html_page(
    out_dir: Path,
    title: str,
    sections: list[ReportSection],
    inputs: list[tuple[str, str]] | None,
    notes: list[str] | None,
) -> tuple[str, dict[str, Path]]:
    """The self-contained HTML text of a report, and {figure name: PNG path} of the PNGs written beside it
    into ``out_dir`` (each figure is also embedded in the page)."""
    written: dict[str, Path] = {}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='meta'>atomvae {__version__}, written "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
    ]
    parts.extend(f"<p>{html.escape(note)}</p>" for note in notes or [])
    if inputs:
        parts.append(_table(inputs))
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(f"<p>{html.escape(p)}</p>" for p in section.paragraphs)
        if section.rows:
            parts.append(_table(section.rows))
        for fig in section.figures:
            png = figure_png(fig.figure)
            png_path = out_dir / f"{fig.name}.png"
            atomic_write_bytes(png_path, png)
            written[fig.name] = png_path
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(fig.name)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>"
            )
        parts.extend(section.html)
    parts.append("</body></html>\n")
    return "\n".join(parts), written


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td class='v'>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def summary_text(summary: dict) -> str:
    """A few lines for the terminal: EMD-RMSD with its references, and one line per distance."""
    lines = [
        f"EMD-RMSD ({summary.get('atoms', '?')}, N = {summary.get('n')}, "
        f"{summary.get('n_atoms_compared')} atoms): {_fmt(summary.get('emd_rmsd'))} A"
    ]
    refs = [
        f"{k.replace('_', ' ')} {_fmt(summary[k])}"
        for k in ("base_only", "floor", "recovered_fraction")
        if summary.get(k) is not None
    ]
    if refs:
        lines.append("  " + ", ".join(refs))
    for note in summary.get("notes", []):
        lines.append(f"  note: {note}")
    cov = summary.get("coverage")
    if cov:
        lines.append(
            f"  COV-R {cov['cov_recall']:.1%} / MAT-R {_fmt(cov['mat_recall'])} A, COV-P "
            f"{cov['cov_precision']:.1%} / MAT-P {_fmt(cov['mat_precision'])} A "
            f"(threshold {cov['threshold']:g} A)"
        )
    rmsf = summary.get("rmsf")
    if rmsf:
        lines.append(
            f"  RMSF vs truth: Pearson r {_fmt(rmsf['pearson_r'])}, mean |difference| "
            f"{_fmt(rmsf['mean_abs_difference'])} A over {len(rmsf['residues'])} residues"
        )
    for d in summary.get("distances", []):
        line = (
            f"  {d['label']}: W1 {_fmt(d['wasserstein_1'])} A, mean pred {_fmt(d['pred_mean'])} / GT "
            f"{_fmt(d['gt_mean'])} A"
        )
        if d.get("cutoff") is not None:
            line += f", < {d['cutoff']:g} A: pred {d['pred_below']:.1%} / GT {d['gt_below']:.1%}"
        lines.append(line)
    for name, check in summary.get("plausibility", {}).items():
        lines.append(
            f"  plausible ({name}): {check['fraction_ok']:.1%} of {check['n_structures']} "
            "structures pass the peptide-bond and clash checks"
        )
    cond = summary.get("conditional")
    if cond:
        for label, r in cond.get("pearson_r", {}).items():
            lines.append(f"  conditional {label}: Pearson r {_fmt(r)}")
    return "\n".join(lines)
