# Everyday tasks. `make test` is what CI runs (see .ci/run).
PY ?= .venv/bin/python

.venv:
	python3.11 -m venv .venv && .venv/bin/pip install -q -e ".[test,local,metrics]" torch==2.14.1 torchvision==0.29.1

test: .venv
	.venv/bin/pytest -q

lint: .venv
	.venv/bin/ruff check zlab tests benchmarks && .venv/bin/ruff format --check zlab && .venv/bin/mypy zlab

bench: .venv
	$(PY) benchmarks/run.py

bench-quick: .venv
	$(PY) benchmarks/run.py --quick

demo: .venv
	.venv/bin/zlab run examples/lora-scale.yaml --out runs/lora-scale

.PHONY: test lint bench bench-quick demo
