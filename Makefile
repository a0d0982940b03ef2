PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy test-all venv clean bench example

$(STAMP): pyproject.toml constraints.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mriq_validate.cli demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not heavy" --durations=15 tests

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m heavy --durations=15 tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The example generator (docs/example.md): train it (about 15 min on 2 CPU cores; checkpoints in examples/checkpoints/),
# then gate every checkpoint and draw readiness over training (mriq-track/readiness.md, readiness.png).
example: $(STAMP)
	MRIQ_TORCH_THREADS=$${MRIQ_TORCH_THREADS:-1} $(BIN)/python examples/train_generator.py
	$(BIN)/python -m mriq_validate.cli track examples/checkpoints/generator-step*.pt --suite suites/brain_tumour.yaml \
		--model examples/model.py:build --out mriq-track

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .mriq-cache mriq-results mriq-track examples/checkpoints
