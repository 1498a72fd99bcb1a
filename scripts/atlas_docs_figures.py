"""Copy the figures of atlases (`headscope report --out DIR`) into docs/figures/atlas/, where the
analyzer pages show them: docs/figures/atlas/<model>-<step>-<k>.png.

Usage: python scripts/atlas_docs_figures.py REPORT[=step,step...] ...
(without "=steps": every step's figures; the role map is 00-role-map in every atlas)
"""

import json
import shutil
import sys
from pathlib import Path

DEST = Path(__file__).resolve().parents[1] / "docs" / "figures" / "atlas"


def main(folders: list[str]) -> None:
    DEST.mkdir(parents=True, exist_ok=True)
    for arg in folders:
        folder, _, steps = arg.partition("=")
        folder, wanted = Path(folder), set(filter(None, steps.split(",")))
        model = json.loads((folder / "scores" / "atlas.json").read_text())["model"]
        for png in sorted((folder / "figures").glob("[0-9][0-9]-*.png")):
            stem = png.stem.split("-", 1)[1]  # "06-attention-sinks-1" -> "attention-sinks-1"
            if wanted and stem.rsplit("-", 1)[0] not in wanted:
                continue
            target = DEST / f"{model}-{stem}.png"
            shutil.copyfile(png, target)
            print(f"{png} -> {target.relative_to(DEST.parents[2])}")


if __name__ == "__main__":
    main(sys.argv[1:])
