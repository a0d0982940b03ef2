PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy test-long test-stress test-all venv clean bench bench-long example zoo docs docs-long

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
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "not heavy" --durations=15 tests

# The heavy end-to-end tests CI runs after make test (about 9 min on 2 cores); test-long: whole workflows and whole-suite
# runs per defective model (about 15 min), which CI leaves out; test-all: everything, stress included.
test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "heavy and not stress and not long" --durations=15 tests

test-long: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup -m "long" --durations=15 tests

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
# downstream Dice. Writes docs/zoo.json, docs/zoo_models.png and the generated table of docs/zoo.md.
# About 1 h 50 min on 2 CPU cores from an empty cache (docs/zoo.md).
ZOO_ARGS ?=
zoo: $(STAMP)
	$(BIN)/python examples/zoo/run_zoo.py --docs $(ZOO_ARGS)

# The generated numbers of README.md and docs/*.md (docs/generate/, docs/generated/*.json; checked against the text by
# tests/test_docs_generated.py). `make docs`: the quick ones (the eraser gate run, the downstream table, the vessel
# suite, the 3D cohort, the detectability measure against FID: about 3 min; a few minutes with a warm cache). `make
# docs-long`: the metric study (20-60 min on 2 cores), the seed floor (10 segmenter trainings, cached) and the
# fresh-clone timings (about 25 min; run it on a quiet machine).
docs: $(STAMP)
	for g in eraser downstream_table vessels volumes detectability; do MRIQ_TORCH_THREADS=1 $(BIN)/python docs/generate/$$g.py || exit 1; done

docs-long: $(STAMP)
	rc=0; for g in seed_floor study timings; do MRIQ_TORCH_THREADS=1 $(BIN)/python docs/generate/$$g.py || rc=1; done; exit $$rc

# Every benchmark at its small default (about 9 min of CPU on 2 cores; docs/benchmarks.md). benchmarks/gpu_check.py
# needs a CUDA device and is skipped without one (its CPU --smoke run is tests/test_gpu_check.py, marked heavy).
bench: $(STAMP)
	for f in benchmarks/*.py; do \
	  if [ $$f = benchmarks/gpu_check.py ] && ! $(BIN)/python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then \
	    echo "== $$f: skipped, no CUDA device (benchmarks/gpu_check.py --smoke runs it on the CPU)"; continue; fi; \
	  echo "== $$f"; MRIQ_TORCH_THREADS=$${MRIQ_TORCH_THREADS:-1} $(BIN)/python $$f || exit 1; \
	done

# The long runs behind the documented figures (hours on 2 CPU cores; docs/benchmarks.md gives each one's cost).
bench-long: $(STAMP)
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/scale.py --sizes 1k 16k --batch-size 128 --json scale-2d.json
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/scale.py --sizes --volumes 32 128 --batch-size 8 --json scale-3d.json
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/seed_floor.py --seeds 10 --k 3 5
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/volume_gate.py --select '' --models builtin:real builtin:tumour-eraser \
	  builtin:boundary-blur builtin:memoriser builtin:collapse
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/bf16_dice.py --seeds 3 --epochs 0
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/copy_detection.py --train 256 2048
	MRIQ_TORCH_THREADS=1 $(BIN)/python benchmarks/cohort_layouts.py --cases 20 --models builtin:real builtin:tumour-eraser

clean:
	rm -rf $(VENV) .mriq-cache mriq-results mriq-track mriq-zoo examples/checkpoints
