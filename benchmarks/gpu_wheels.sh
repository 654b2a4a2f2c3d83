#!/usr/bin/env bash
# Wheels for the GPU image (Python 3.12, torch + transformers present, no network there): what Refinery and the TRL
# side-by-side need and the image lacks, at the versions of this venv. Run here, then carry `.whl` with the call:
#
#   bash benchmarks/gpu_wheels.sh          # writes .whl/ (git-ignored, about 25 MB)
#   # device call: carry [".whl"], command: bash benchmarks/gpu_check.sh   (gpu_check.sh installs .whl/ first)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# the image has accelerate, pyarrow, pandas, xxhash, typer, rich, scipy, sympy, httpx, lxml, peft, fsspec (KINDS.md)
NAMES=(typing_extensions pydantic pydantic_core annotated-types typing-inspection fastapi starlette uvicorn latex2sympy2_extended
       antlr4-python3-runtime FastWARC brotli datasets dill multiprocess)
SDISTS=(langid)  # no wheel on PyPI: built here into a pure-Python wheel
pins=()
for n in "${NAMES[@]}"; do
  v=$("$PY" -m pip show "$n" 2>/dev/null | sed -n 's/^Version: //p')
  [[ -n "$v" ]] || { echo "not installed here: $n (run make install)" >&2; exit 1; }
  pins+=("$n==$v")
done
spins=()
for n in "${SDISTS[@]}"; do spins+=("$n==$("$PY" -m pip show "$n" | sed -n 's/^Version: //p')"); done
pins+=("trl==${TRL_VERSION:-1.16.0}")  # not a Refinery dependency; the version gpu_check's TRL rows were written for
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
"$PY" -m pip wheel -q --no-deps -w .whl "${spins[@]}"
ls .whl | wc -l
du -sh .whl
