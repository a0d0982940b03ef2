PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy test-stress test-all venv clean bench example zoo

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
	$(BIN)/python -m pytest -q -n 2 -m "heavy and not stress" --durations=15 tests

test-stress: $(STAMP)
	$(BIN)/python -m pytest -q -m stress --durations=15 tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The example generator (docs/example.md): train it on 1 torch thread (checkpoints at 50, 150, 400, 800 and 1200 steps in
# examples/checkpoints/) while the second core computes the gate's real-data side (the suite against builtin:real,
# into the same cache), then gates each checkpoint of EXAMPLE_STEPS as training writes it (mriq-validate track --reuse),
# the last one when training ends, and draws readiness over training (mriq-track/readiness.md, readiness.png).
# EXAMPLE_STEPS="50 150 400 800 1200" gates all five. See examples/run_example.py.
EXAMPLE_STEPS ?= 50 400 1200
example: $(STAMP)
	$(BIN)/python examples/run_example.py --steps $(EXAMPLE_STEPS)

# The model zoo (docs/zoo.md): generators of four families (pixel and latent diffusion, rectified flow, SPADE GAN;
# ZOO_ARGS="--families ddpm ldm rflow spade vae" adds the conditional VAE) trained on the embedded data, three
# checkpoints each (cached by content hash; only what is missing is trained), every checkpoint gated with
# suites/brain_tumour.yaml, then the second axis of the study: how each measure ranks the real generators against
# downstream Dice. Writes docs/zoo.json, docs/zoo_models.png and the generated tables of docs/zoo.md and README.md.
# About 1 h 50 min on 2 CPU cores from an empty cache (docs/zoo.md).
ZOO_ARGS ?=
zoo: $(STAMP)
	$(BIN)/python examples/zoo/run_zoo.py --docs $(ZOO_ARGS)

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .mriq-cache mriq-results mriq-track mriq-zoo examples/checkpoints
