"""Generated HTML pages: data goes in as JSON that no text inside it can break out of.

A class name, file name or store folder ends up in a page's data. Put in the page by string replacement, a name
holding ``</script>``, ``<!--<script>`` or a placeholder of the page itself changes the page: it runs code or
blanks it. :func:`json_script` embeds data as ``<script type="application/json">`` with every character that
HTML or JavaScript could read as markup escaped (``<``, ``>``, ``&``, U+2028, U+2029); the page reads it with
``JSON.parse(element.textContent)`` and inserts text with ``textContent``, never ``innerHTML``.
"""

from __future__ import annotations

import html
import json
from typing import Any

_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def json_text(obj: Any) -> str:
    """Compact JSON of ``obj`` with ``<``, ``>``, ``&``, U+2028 and U+2029 written as ``\\uXXXX`` escapes.

    The escapes only ever fall inside JSON strings (JSON's own syntax uses none of these characters), so the text
    parses to the same value and cannot close a script element or open an HTML comment.

    Raises:
        ValueError: ``obj`` holds NaN or infinity (not JSON).
    """
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).translate(_ESCAPES)


def json_script(obj: Any, element_id: str) -> str:
    """``<script type="application/json" id=...>`` holding ``obj`` (read it with ``JSON.parse(el.textContent)``)."""
    return f'<script type="application/json" id="{html.escape(element_id)}">{json_text(obj)}</script>'
