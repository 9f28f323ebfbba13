"""How a source file becomes documents, one function per ``format`` of the corpus source list.

Every function takes the matched files (and the unpacked package root) and returns plain-text documents.
"""
from __future__ import annotations

import gzip
import html.parser
import os
import re
import shutil
import struct
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.roff import render_roff

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Old Western-European files (some license texts, fortunes) are Latin-1; nothing else is expected.
        return raw.decode("latin-1")


def fmt_text(files, root):
    return [read_text(f) for f in files]


def fmt_license(files, root):
    docs = []
    for f in files:
        text = read_text(f)
        if text.startswith("---"):
            end = text.find("\n---", 3)
            if end != -1:
                text = text[end + 4:]
        docs.append(text.strip() + "\n")
    return docs


class _HTMLText(html.parser.HTMLParser):
    _SKIP = {"script", "style", "head", "nav"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "dt", "dd",
              "section", "blockquote", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(source: str) -> str:
    p = _HTMLText()
    p.feed(source)
    text = "".join(p.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def fmt_html(files, root):
    return [html_to_text(read_text(f)) for f in files]


def fmt_fortune(files, root):
    docs = []
    for f in files:
        for entry in re.split(r"^%\s*$", _ANSI.sub("", read_text(f)), flags=re.M):
            if entry.strip():
                docs.append(entry.strip("\n") + "\n")
    return docs


def man_renderer() -> str:
    """'man+col' when both tools exist here, else 'python-roff' (experiments.roff)."""
    return "man+col" if shutil.which("man") and shutil.which("col") else "python-roff"


def _render_man(path: Path, renderer: str) -> str | None:
    source = read_text(path)
    if source.lstrip().startswith(".so ") and len(source.strip().splitlines()) <= 2:
        return None  # a stub that points at another page
    if renderer == "python-roff":
        return render_roff(source)
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0", "LC_ALL": "C.UTF-8"}
    man = subprocess.Popen(["man", "--nj", "--nh", "-E", "UTF-8", "-l", str(path)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    col = subprocess.run(["col", "-bx"], stdin=man.stdout, capture_output=True, env=env)
    man.stdout.close()
    man.wait()
    text = col.stdout.decode("utf-8", "replace")
    return text if text.strip() else render_roff(source)


def fmt_man(files, root):
    renderer = man_renderer()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pages = list(pool.map(lambda f: _render_man(f, renderer), files))
    return [p for p in pages if p]


def fmt_bible(files, root):
    """The King James Bible printed by the package's own ``bible`` program, one document per chapter."""
    data_dirs = sorted({str(p.parent) for p in root.parent.glob("*/usr/lib/bible.data")})
    if not data_dirs:
        raise FileNotFoundError(f"bible.data not found next to {root}: list bible-kjv-text with bible-kjv")
    out = subprocess.run([str(files[0]), "-p", data_dirs[0], "-l80", "gen1:1-rev22:21"], capture_output=True,
                         check=True).stdout.decode("utf-8", "replace")
    chapters = re.split(r"\n(?=\S.* \d+\n\n)", "\n" + out)
    return [c.strip() + "\n" for c in chapters if c.strip()]


def fmt_rdata_austen(files, root):
    """Chapters of Jane Austen's novels from janeaustenr's lazy-load R database (.rdb + .rdx)."""
    import warnings

    import rdata

    docs = []
    warnings.filterwarnings("ignore", message=".*(RDS|file type).*", module="rdata")
    for rdb in files:
        rdx = rdata.conversion.convert(rdata.parser.parse_file(rdb.with_suffix(".rdx"), extension="rds"))
        raw = rdb.read_bytes()
        for name, (offset, length) in rdx["variables"].items():
            blob = raw[int(offset): int(offset) + int(length)]
            # R's lazy-load record: a big-endian length, then the zlib-compressed serialised object.
            (size,) = struct.unpack(">I", blob[:4])
            lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            text = "\n".join("" if line is None else str(line) for line in lines)
            for chapter in re.split(r"\n(?=(?:CHAPTER|Chapter) [0-9IVXLC]+)", text):
                if chapter.strip():
                    docs.append(f"{chapter.strip()}\n")
    return docs


FORMAT_FUNCTIONS = {"text": fmt_text, "license": fmt_license, "man": fmt_man, "html": fmt_html,
                    "fortune": fmt_fortune, "bible": fmt_bible, "rdata_austen": fmt_rdata_austen}
