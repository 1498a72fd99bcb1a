# The two commands of the README. Both are safe to re-run; both use the one locked environment.
.PHONY: report test docs lint setup lock

# While headscope and its tests run, pip (and uv) can reach no index: nothing may be installed then.
OFFLINE = PIP_NO_INDEX=1 UV_OFFLINE=1

report:            ## set everything up, then write the report on the bundled model
	scripts/setup.sh
	$(OFFLINE) .venv/bin/headscope report --out headscope-report

test:              ## set up, then run the whole test suite
	scripts/setup.sh
	$(OFFLINE) .venv/bin/python -m pytest -q -p no:cacheprovider

docs:              ## set up, then build the docs site into site/ (offline, strict: a warning fails)
	scripts/setup.sh
	$(OFFLINE) HF_HUB_OFFLINE=1 PLOTLY_RENDERER=png .venv/bin/mkdocs build --strict
	$(OFFLINE) .venv/bin/python scripts/check_site.py site

lint:              ## set up, then lint and format-check (ruff) and type-check the package (mypy)
	scripts/setup.sh
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

setup:             ## only the set-up (.venv = requirements/lock.txt + headscope)
	scripts/setup.sh

lock:              ## re-resolve requirements/lock.txt from pyproject.toml's ranges (needs the index)
	scripts/lock.sh
