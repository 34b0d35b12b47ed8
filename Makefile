# Two commands: `make demo` (set up + run the built-in scenario) and `make test` (set up + whole suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The MLproject commands call `python`: make it the venv's.
export PATH := $(BIN):$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
RECIPE ?= recipes/digits.yaml

.PHONY: venv demo test benchmark clean chromium
UI_PORT ?= 5006
CHROMIUM := /usr/bin/chromium

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
	@echo "Done. Runs are in $(MLFLOW_TRACKING_URI) (artifacts under ./mlruns);"
	@echo "MLflow's own UI: $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)  (report.html in the diagnostics run)"
	@echo "Now serving the transfer app on the pair just diagnosed at http://127.0.0.1:$(UI_PORT)/  (Ctrl-C stops it)"
	$(BIN)/mlflow-transfer ui --experiment-name mlflow-transfer-demo --port $(UI_PORT)

# The browser tests drive Debian's Chromium (never a downloaded one); install it when missing.
chromium:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  $$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: could not install chromium (needs root); the browser tests will be skipped"; }

# Two workers, one test file each (a module's shared fixtures stay in one process): the suite waits on
# servers, browsers and subprocesses much of the time, so two files at once use the two cores better.
test: venv chromium
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

benchmark: venv
	$(BIN)/python benchmarks/bench_demo_pipeline.py

clean:
	rm -rf mlruns mlflow.db test-output .pytest_cache
