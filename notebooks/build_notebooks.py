"""Writes every notebook from its source in notebooks/src/NN_name.py (a module with a CELLS list of
("md" | "code", text) pairs), so notebooks stay reviewable as code. Run from the repo root:
python notebooks/build_notebooks.py"""

import importlib.util
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent


def build(cells, path: Path) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src) for kind, src in cells]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged notebook changes nothing
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbf.write(nb, path)


def main() -> None:
    for source in sorted((HERE / "src").glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(source.stem, source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        build(module.CELLS, HERE / f"{source.stem}.ipynb")
        print(f"wrote notebooks/{source.stem}.ipynb")


if __name__ == "__main__":
    main()
