"""A model card (card.md) as a web page: Markdown rendered, sanitised, with its plots.

The card is ours, but it is written by a training run and may quote data set
text, so the HTML that Python-Markdown produces is cleaned with nh3 (the Rust
``ammonia`` sanitiser) to a short list of tags: no script, no style, no event
attributes, and image sources limited to the card's own plots, served by
:func:`plot_path` from the card's folder. Plots the text only names (``See
confusion_matrix.png``) are shown after it, so every figure of the card is seen.
"""

from __future__ import annotations

import re
from pathlib import Path

import markdown
import nh3

PLOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}\.png")
TAGS = {
    "a", "blockquote", "br", "code", "em", "figcaption", "figure", "h1", "h2", "h3", "h4",
    "hr", "img", "li", "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead",
    "tr", "ul",
}  # fmt: skip
ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "th": {"align"},
    "td": {"align"},
}


def plot_path(card_dir: Path, name: str) -> Path | None:
    """A plot file of the card (``<name>.png`` directly in its folder), or None."""
    if not PLOT_NAME.fullmatch(name):
        return None
    path = card_dir / name
    return path if path.is_file() else None


def card_html(text: str, card_dir: Path, plot_url: str) -> str:
    """The card's Markdown as safe HTML; ``plot_url`` is the URL prefix of its plots."""
    html = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    html = re.sub(
        r'(<img[^>]*\ssrc=")([^"/:]+\.png)"',
        lambda m: f'{m.group(1)}{plot_url}{m.group(2)}"',
        html,
    )
    shown = set(re.findall(r'src="[^"]*/([^"/]+\.png)"', html))
    extra = sorted(p.name for p in card_dir.glob("*.png") if p.name not in shown)
    for name in extra:
        html += f'<figure><img src="{plot_url}{name}" alt="{name}">'
        html += f"<figcaption>{name}</figcaption></figure>"
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"http", "https"},
        link_rel="noopener noreferrer",
    )
