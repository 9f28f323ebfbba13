"""A small roff (man page) to plain-text renderer, used when ``man``/``col`` are not on the machine.

Good enough for language-model text: section headings, paragraphs, font macros and the common escapes; it
does not fill or justify lines, and tables (tbl) come out as their raw cells.
"""
from __future__ import annotations

import re

_NAMED = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": "\u201c", "rq": "\u201d", "oq": "\u2018",
          "cq": "\u2019", "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "mu": "\u00d7", "->": "\u2192",
          "<-": "\u2190", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260", "ti": "~", "ha": "^", "rs": "\\",
          "hy": "-", "mi": "-", "pl": "+", "eq": "=", "lB": "[", "rB": "]", "ga": "`"}
_FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SM", "SB"}
_BREAKS = {"PP", "P", "LP", "IP", "TP", "HP", "sp", "br", "RS", "RE", "TQ", "in", "ti", "EX", "EE", "nf", "fi"}


def _escapes(s: str) -> str:
    s = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", s)         # font changes
    s = re.sub(r"\\\[([^\]]+)\]", lambda m: _NAMED.get(m.group(1), ""), s)
    s = re.sub(r"\\\((..)", lambda m: _NAMED.get(m.group(1), ""), s)
    s = re.sub(r"\\\*(\[[^\]]*\]|\(..|.)", "", s)        # strings
    s = re.sub(r"\\[sv]'?[-+]?\d+'?", "", s)              # size / vertical motion
    s = re.sub(r"\\[hw]'[^']*'", "", s)
    s = s.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ").replace("\\~", " ")
    s = re.sub(r"\\[&|^%:c]", "", s)
    return s.replace("\\\\", "\\")


def _args(line: str) -> list[str]:
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', line)]


def render_roff(source: str) -> str:
    """Plain text of a man page's roff source."""
    out: list[str] = []
    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", '\\"')) or raw in (".", "'"):
            continue
        if raw.startswith((".", "'")):
            parts = raw[1:].strip().split(None, 1)
            if not parts:
                continue
            req, rest = parts[0], parts[1] if len(parts) > 1 else ""
            if req == "TH":
                a = _args(rest)
                out.append(f"{a[0]}({a[1]})" if len(a) > 1 else rest)
                out.append("")
            elif req in ("SH", "SS"):
                heading = _escapes(" ".join(_args(rest)))
                out.extend(["", heading.upper() if req == "SH" else heading])
            elif req in _FONT_MACROS:
                joiner = " " if req in ("B", "I", "SM", "SB") else ""
                out.append(_escapes(joiner.join(_args(rest))))
            elif req in _BREAKS:
                if req in ("PP", "P", "LP", "sp", "IP", "TP", "HP"):
                    out.append("")
                if req == "IP" and rest:
                    out.append(_escapes(_args(rest)[0]))
            # every other request (macros definitions, conditionals, tbl markers) carries no prose
            continue
        out.append(_escapes(raw))
    text = "\n".join(line.rstrip() for line in out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
