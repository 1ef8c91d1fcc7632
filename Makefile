# lora_merge: every target creates .venv by itself on a fresh machine.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: demo test bench lint study clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first and alone: the pinned CPU wheel, never a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) cli.py walkthrough

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/fold.py

lint: $(STAMP)
	$(PY) -m ruff check lora_merge tests benchmarks cli.py

clean:
	rm -rf .venv runs .pytest_cache
