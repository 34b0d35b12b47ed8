# Two commands: `make demo` (set up + run the built-in scenario) and `make test` (set up + whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The MLproject commands call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
RECIPE ?= recipes/digits.yaml

.PHONY: venv demo test benchmark clean

venv: $(STAMP)

# torch/torchvision are pinned in pyproject.toml to the pair that pip installs here from local wheels.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: venv
	@echo "== mlflow run . (recipe $(RECIPE)) into $(MLFLOW_TRACKING_URI)"
	$(BIN)/mlflow run . --env-manager local -P recipe=$(RECIPE) --experiment-name mlflow-transfer-demo
	@echo ""
	@echo "Done. Runs are in $(MLFLOW_TRACKING_URI) (artifacts under ./mlruns)."
	@echo "Browse them:  $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)   -> http://127.0.0.1:5000"

test: venv
	$(BIN)/python -m pytest -q

benchmark: venv
	$(BIN)/python benchmarks/bench_demo_pipeline.py

clean:
	rm -rf mlruns mlflow.db test-output .pytest_cache
