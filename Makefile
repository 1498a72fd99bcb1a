# The two commands of the README. Both are safe to re-run.
.PHONY: report test setup

report:            ## set everything up, then write the report on the bundled model
	scripts/setup.sh test,jupyter
	.venv/bin/headscope report --out headscope-report

test:              ## set up, then run the whole test suite
	scripts/setup.sh test
	.venv/bin/python -m pytest -q -p no:cacheprovider

setup:
	scripts/setup.sh test,jupyter
