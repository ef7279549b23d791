"""Generate README.md from nbs/index.ipynb without Quarto (nbdev_readme needs it).

`python .ci/readme.py` writes README.md; `--check` exits 1 when README.md is out of date.
Cells flagged `#| hide` are dropped; other `#|` directive lines are removed; outputs are kept.
"""
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parent.parent


def render(nb_path=ROOT / "nbs" / "index.ipynb") -> str:
    nb = nbformat.read(nb_path, as_version=4)
    cells = []
    for cell in nb.cells:
        lines = cell.source.splitlines()
        directives = [l.replace(" ", "") for l in lines if l.startswith("#|")]
        if "#|hide" in directives or "#|exporti" in directives:
            continue
        cell.source = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
        if cell.source:
            cells.append(cell)
    nb.cells = cells
    body, _ = MarkdownExporter().from_notebook_node(nb)
    text = "\n".join(l.rstrip() for l in body.strip().splitlines())
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    header = "<!-- generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file -->\n\n"
    return header + text + "\n"


if __name__ == "__main__":
    text = render()
    out = ROOT / "README.md"
    if "--check" in sys.argv:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print("README.md is out of date with nbs/index.ipynb: run `make readme`", file=sys.stderr)
            sys.exit(1)
    else:
        out.write_text(text, encoding="utf-8")
