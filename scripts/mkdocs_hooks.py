"""MkDocs hooks for headscope's site (mkdocs.yml `hooks:`).

The notebooks live in notebooks/ (next to their sources in notebooks/src), outside docs/: this hook
adds them to the site as notebooks/NN_name.ipynb pages, which mkdocs-jupyter renders (and executes).
nbconvert's pages always load the Jupyter widgets renderer from unpkg.com; the notebooks have no
widgets and the site must open offline, so that script is taken out of the rendered pages.
"""

import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File
from mkdocs_jupyter.plugin import NotebookFile

ROOT = Path(__file__).resolve().parents[1]


@event_priority(-100)  # after mkdocs-jupyter's own on_files, which only wraps files under docs/
def on_files(files, config):
    for nb in sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")):
        page = NotebookFile(File.generated(config, f"notebooks/{nb.name}", abs_src_path=str(nb)), **config)
        # NotebookFile wraps the file without copying its source path (it assumes one under docs/).
        page.__dict__["abs_src_path"] = str(nb)
        files.append(page)
    return files


_WIDGETS_LOADER = re.compile(
    r"<script>\s*\(function\(\) \{\s*function addWidgetsRenderer\(\).*?\}\(\)\);\s*</script>", re.S
)


def on_post_page(output, page, config):
    if page.file.src_uri.startswith("notebooks/"):
        output, n = _WIDGETS_LOADER.subn("", output)
        # nbconvert adds the loader only to a notebook whose outputs hold widgets (a tqdm bar): none is
        # fine (headscope's loads print no progress bar now); more than one means its template changed,
        # so fail rather than ship a CDN request (check_site.py also fails on any request that leaves).
        if n > 1 or (n == 0 and "unpkg.com" in output):
            raise RuntimeError(
                f"{page.file.src_uri}: expected at most one Jupyter widgets loader and no CDN script, found {n} loaders"
            )
    return output
