#!/usr/bin/env bash
# Every GPU target of the project measured in one run (#19): one JSON line per figure in OUT/figures.jsonl.
#
#   bash bench/gpu.sh OUT                 on a machine with a GPU (about 6-8 minutes on an H100/H200)
#   bash bench/gpu.sh OUT --cpu-smoke     the same commands on tiny data on the CPU: checks the script, measures nothing
#   bash bench/gpu.sh OUT recipe gpus_0_0 rerun some items only (names as in bench/gpu.py)
#
# Needs data/digit-recognizer.zip (Kaggle's Digit Recognizer zip) for the GPU run. Packages the machine lacks
# (albumentations and its dependencies, ttach, lightgbm) come as wheels in .whl/, made beforehand where there is
# internet with:  bash bench/gpu.sh --wheels   (pip download for CPython 3.12 on manylinux x86_64)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned together (albumentations 2.0.8 wants albucore 0.0.24, pydantic 2.14.4 wants pydantic-core 2.50.5): the
# versions the CPU suite runs with.
WHEELS="albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16 ttach==0.0.3 lightgbm==4.7.0"
if [ "${1:-}" = "--wheels" ]; then
  rm -rf .whl && mkdir -p .whl
  python3 -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --dest .whl $WHEELS
  # the code dataset `python -m pipeline.remote` uploads, for the kernel item (needs the package index once)
  ${PYTHON:-python3} -c "from pathlib import Path; from pipeline.remote import build; build.code_dataset(Path('.whl/code'), 'bench/pipeline-code')"
  ls .whl .whl/code
  exit 0
fi

OUT=${1:?usage: bash bench/gpu.sh OUT [--cpu-smoke] [items...]}
shift
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ "${1:-}" = "--cpu-smoke" ]; then PY=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# Carried wheels: installed beside the machine's own packages (torch, timm, pandas... stay the machine's).
if ls .whl/*.whl >/dev/null 2>&1; then
  SITE=${TMPDIR:-/tmp}/pipeline-site
  missing=""
  for w in $WHEELS; do
    m=$(echo "${w%%==*}" | tr - _)
    "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$m') is None)" 2>/dev/null || missing="$missing $w"
  done
  if [ -n "$missing" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" .whl/*.whl 2>&1 | tail -3 || true
    export PYTHONPATH="$PYTHONPATH:$SITE"
  fi
fi

mkdir -p "$OUT"
"$PY" -c "import torch, timm, pipeline; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)" \
  | tee "$OUT/versions.txt"
exec "$PY" bench/gpu.py "$OUT" "$@"
