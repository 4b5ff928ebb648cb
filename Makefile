# make run   -- the whole job (make_folds -> train --fold all -> infer --tta); bundled sample when no data
# make test  -- the test suite (what CI runs)
# Both create .venv on first use. torch is pinned here, not in pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?= data/digit-recognizer
TRACK ?=
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv run test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m pipeline.make_folds --data $(DATA) --overwrite
	$(PY) -m pipeline.train --fold all --data $(DATA) --overwrite $(if $(TRACK),--track $(TRACK))
	$(PY) -m pipeline.infer --tta --data $(DATA)

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: $(STAMP)
	@$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m pipeline.bench --data $(DATA)

clean:
	rm -rf folds/*.csv weights/*/ submissions/*.csv data/sample-digits
