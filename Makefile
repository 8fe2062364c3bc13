# Two commands on a fresh machine: `make demo` and `make test`.
# The CPU build of torch is installed first and pinned so that the package's own range
# (torch>=2.4) is already satisfied and pip does not pull CUDA wheels. GPU users: install
# the torch build for your CUDA first, then `make install TORCH_PIN=`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.install-stamp
SHARED ?= ../shared/data

.PHONY: install demo demo-mnist test bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	@if [ -n "$(TORCH_PIN)" ]; then $(BIN)/pip install -q "$(TORCH_PIN)"; fi
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job, the slide pipeline on a local Ray instance: a tissue-mosaic cohort from the real
# H&E tiles of $(SHARED)/tissue/crc_tiles (synthetic needles without them), the slide agent trained
# with Ray rollout actors from a 1 MB seed, held-out slides + $(SHARED)/slides scored (pipelines/demo.py).
demo: install
	$(BIN)/python pipelines/demo.py --out runs/demo --shared $(SHARED)/slides

# The paper's setting: RAM on 60x60 cluttered MNIST (configs/cluttered60_8g.yaml, the recipe the
# README measured), one process on every core for 4 minutes, the schedule annealed over them;
# the real digits of $(SHARED)/mnist when present, generated digits otherwise. Starts afresh
# each time (a resumed run would find its 4 minutes spent). The Ray version of the same:
# `python pipelines/train.py -c configs/demo.yaml` (half the images per second on 2 cores).
demo-mnist: install
	$(BIN)/ram-wsi train --config configs/cluttered60_8g.yaml --data-dir $(SHARED)/mnist \
		--set train.max_minutes=4 --set train.eval_samples=5 --set train.progress=false \
		--out-dir runs/demo_mnist --no-resume

test: install
	$(BIN)/python -m pytest -q tests

# The benchmarks the README quotes (long: the MNIST table trains four models).
bench: install
	$(BIN)/python pipelines/bench_throughput.py --threads 2 --batches 128 1024 --steps 60
	$(BIN)/python pipelines/bench_glimpse.py --sizes 8192 131072 --patch 32 --rounds 6 --out bench-results/glimpse
	$(BIN)/python pipelines/bench_glimpse.py --sizes 8192 131072 --patch 32 --base 2 --rounds 6 --no-memory \
		--out bench-results/glimpse_20x
	$(BIN)/python pipelines/bench_scaling.py --actors 1 2 4 --envs mnist slides --slide-size 8192 \
		--data-dir $(SHARED)/mnist --out-dir bench-results/scaling
	$(BIN)/python pipelines/bench_score.py --sizes 8192 32768 131072 --out bench-results/score
	$(BIN)/python pipelines/bench_mnist.py --config configs/cluttered60_8g.yaml --data-dir $(SHARED)/mnist

lint: install
	$(BIN)/ruff check ram_wsi pipelines tests

clean:
	rm -rf $(VENV) runs .pytest_cache
