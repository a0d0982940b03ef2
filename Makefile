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

# The example generator (docs/example.md): train it on 1 torch thread (checkpoints at 50, 150, 400, 800 and 1200 steps in
# examples/checkpoints/), then gate three of them (EXAMPLE_STEPS; EXAMPLE_STEPS="00050 00150 00400 00800 01200" gates
# all five) and draw readiness over training (mriq-track/readiness.md, readiness.png). While the generator trains, the
# second core computes what the gate needs from the real data alone (the real-data segmenters and noise-floor seeds,
# reference features, NIQE model): the suite run against builtin:real, into the same cache, so the first checkpoint's
# gate costs what the later ones do. Measured from an empty cache on 2 quiet cores: 22 min 57 s (training 907 s, the
# real-data side 258 s beside it, gating 148 + 135 + 148 s).
EXAMPLE_STEPS ?= 00050 00400 01200
example: $(STAMP)
	mkdir -p mriq-track
	$(BIN)/python -m pytest -q -p no:cacheprovider suites/brain_tumour.yaml --mriq-model builtin:real > mriq-track/real-data.log 2>&1 & \
	real=$$!; MRIQ_TORCH_THREADS=$${MRIQ_TORCH_THREADS:-1} $(BIN)/python examples/train_generator.py; trained=$$?; \
	wait $$real || { echo "the gate on builtin:real failed: mriq-track/real-data.log"; exit 1; }; test $$trained = 0
	$(BIN)/python -m mriq_validate.cli track $(EXAMPLE_STEPS:%=examples/checkpoints/generator-step%.pt) \
		--suite suites/brain_tumour.yaml --model examples/model.py:build --out mriq-track

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .mriq-cache mriq-results mriq-track examples/checkpoints
