"""The report as one self-contained HTML page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}img{max-width:100%}code{background:#f4f4f4}"""


def to_html(markdown_text: str, image_dir: Path, title: str) -> str:
    """One self-contained page: the Markdown rendered, every image embedded as a data URI."""
    import markdown

    html = markdown.markdown(markdown_text, extensions=["tables"])

    def embed(m: re.Match) -> str:
        f = image_dir / m.group(1)
        data = base64.b64encode(f.read_bytes()).decode() if f.is_file() else ""
        return f'src="data:image/png;base64,{data}"'

    html = re.sub(r'src="([^"/:]+\.png)"', embed, html)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mera-bench: {title}</title>"
            f"<style>{_STYLE}</style></head><body>{html}</body></html>")
