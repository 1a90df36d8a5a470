"""Executes notebooks/results.ipynb headless with nbclient and renders it to one self-contained HTML file.

  tools/bazel run //notebooks:results -- --out results.html [--results_dir bench/results]

nbconvert is not in the lock, so the HTML is written here: markdown cells
through markdown-it-py, code through Pygments, outputs as text, HTML or inline
PNG. The notebook in git stays without outputs; only the rendered copy has them.
"""

import base64
import html
import os
import pathlib
import sys
import tempfile

import nbclient
import nbformat
from absl import app, flags
from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from model.loader import user_path

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOK = HERE / "results.ipynb"

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "results.html", "HTML file to write (relative paths: where you ran the command)")
flags.DEFINE_string("results_dir", None, "results folder holding */summary.json (default: the repo's bench/results)")
flags.DEFINE_integer("timeout", 300, "seconds one cell may run")


class RenderError(RuntimeError):
    """A cell failed or the notebook could not be read; the message names the cell."""


def execute(notebook=NOTEBOOK, results_dir=None, timeout=300):
    """Runs every cell in a fresh python3 kernel (cwd: the repository root) and returns the executed notebook."""
    nb = nbformat.read(str(notebook), as_version=4)
    env_before = os.environ.get("LAB_RESULTS_DIR")
    if results_dir is not None:
        os.environ["LAB_RESULTS_DIR"] = str(results_dir)
    # The kernel imports `notebooks.results_lib`: it needs the repository (or runfiles) root on its path.
    root = str(pathlib.Path(notebook).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    try:
        client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                         resources={"metadata": {"path": root}})
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        raise RenderError(f"{notebook}: a cell failed:\n{err}") from None
    finally:
        if results_dir is not None:
            if env_before is None:
                os.environ.pop("LAB_RESULTS_DIR", None)
            else:
                os.environ["LAB_RESULTS_DIR"] = env_before
    return nb


def _output_html(out):
    if out.output_type == "stream":
        return f'<pre class="stream">{html.escape("".join(out.text))}</pre>'
    if out.output_type == "error":
        return f'<pre class="error">{html.escape(out.ename + ": " + out.evalue)}</pre>'
    data = out.get("data", {})
    if "image/png" in data:
        png = data["image/png"]
        base64.b64decode(png, validate=False)  # a broken payload fails here, not in the browser
        return f'<img alt="figure" src="data:image/png;base64,{png.strip()}">'
    if "text/html" in data:
        return "".join(data["text/html"])
    if "text/plain" in data:
        return f'<pre>{html.escape("".join(data["text/plain"]))}</pre>'
    return ""


def to_html(nb, title="Benchmark results"):
    """One HTML page: markdown rendered, code highlighted, outputs inline (PNG figures as data URIs)."""
    md = MarkdownIt()
    formatter = HtmlFormatter()
    body = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            body.append(f'<div class="md">{md.render(cell.source)}</div>')
        elif cell.cell_type == "code":
            body.append(f'<div class="code">{highlight(cell.source, PythonLexer(), formatter)}</div>')
            body.extend(_output_html(o) for o in cell.get("outputs", []))
    style = formatter.get_style_defs(".highlight")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} pre{{overflow-x:auto}} "
            f"img{{max-width:100%}} .code{{background:#f6f8fa}} {style}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file in the same folder (a reader never sees half a page)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise RenderError(f"--out {path} is a directory; give a file name such as results.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv):
    del argv
    out = user_path(FLAGS.out)
    results_dir = user_path(FLAGS.results_dir) if FLAGS.results_dir else None
    try:
        nb = execute(NOTEBOOK, results_dir=results_dir, timeout=FLAGS.timeout)
        write_atomic(out, to_html(nb))
    except (RenderError, FileNotFoundError, ValueError) as err:
        sys.exit(f"notebooks/render: {err}")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
