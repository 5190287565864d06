"""Small building blocks for self-contained HTML reports (figures inlined as PNG).

Reports stay light: a figure is rendered at most ``MAX_FIGURE_WIDTH_PX`` wide (pages are
1100 px wide), then stored as a palette PNG (at most 256 colours, no dithering; matplotlib's
flat colours and anti-aliased lines survive unchanged to the eye) at about a third of the
size of matplotlib's RGBA PNG.
"""

from __future__ import annotations

import base64
import html
import io
from typing import NamedTuple

__all__ = ["Section", "figure_html", "figure_png", "table_html", "render_page"]

FIGURE_DPI = 100
MAX_FIGURE_WIDTH_PX = 1400


class Section(NamedTuple):
    """One titled part of a report; ``body`` is trusted HTML built with the helpers here."""

    title: str
    body: str


def figure_png(fig, *, dpi: float = FIGURE_DPI, max_width_px: int = MAX_FIGURE_WIDTH_PX) -> bytes:
    """A matplotlib figure as compressed palette-PNG bytes (closes the figure)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    width_in = fig.get_size_inches()[0]
    dpi = min(dpi, max_width_px / max(width_in, 1e-6))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    palette = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                             dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def figure_html(fig, alt: str = "") -> str:
    """A matplotlib figure as an inline <img> (compressed PNG; closes the figure)."""
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def table_html(df, float_format: str = "{:.3g}") -> str:
    """A pandas DataFrame as an HTML table."""
    return df.to_html(classes="table", float_format=lambda x: float_format.format(x), border=0)


def text_html(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


_STYLE = """
body{font-family:system-ui,-apple-system,sans-serif;margin:2em auto;max-width:1100px;\
color:#222;padding:0 1em}
h1{border-bottom:2px solid #446;padding-bottom:.2em} h2{color:#335;margin-top:1.6em}
table.table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.table td,table.table th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:right}
img{max-width:100%;margin:.4em 0} .pass{color:#070;font-weight:bold} \
.fail{color:#b00;font-weight:bold}
.warn{background:#fff4e0;border-left:4px solid #e90;padding:.4em .8em;margin:.4em 0}
nav a{margin-right:1em}
"""


def render_page(title: str, sections: list[Section], intro: str = "") -> str:
    """A complete, self-contained HTML page."""
    nav = " ".join(
        f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections)
    )
    body = "".join(
        f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>{s.body}</section>'
        for i, s in enumerate(sections)
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{intro}<nav>{nav}</nav>{body}</body></html>"
    )
