.PHONY: demo test lint bench setup
setup:
	bash scripts/bootstrap.sh
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
bench: setup
	bash bench/run.sh
