#!/usr/bin/env bash
# Creates .venv-qsensoropt: a SEPARATE virtual environment holding qsensoropt 1.1.0 for the
# NV-DC-24 side-by-side benchmark (issue 7; experiments/qsensoropt_nv_dc.py runs in it).
# It is not a dependency of qsm-gym and is never imported by the package: qsensoropt needs
# Python < 3.12, TensorFlow <= 2.12 and NumPy 1.x, which clash with qsm-gym's own stack.
#
# Idempotent: re-running reuses the venv and pip skips what is already installed.
# Usage:   bash experiments/qsensoropt_venv.sh            (venv at ./.venv-qsensoropt)
#          QSENSOROPT_VENV=/path PYTHON=python3.11 bash experiments/qsensoropt_venv.sh
#
# Choices (why):
# - tensorflow-cpu==2.12.0: qsensoropt pins "tensorflow >=2.6, <=2.12"; 2.12.0 is the newest
#   release inside that pin with a CPython 3.11 wheel, and the CPU build is a third of the
#   size of the full one. Because the distribution is named tensorflow-cpu (not tensorflow),
#   qsensoropt itself is installed with --no-deps after its runtime imports are installed.
# - numpy<1.24 (TensorFlow 2.12's own pin), pandas~=1.5, progressbar2~=4.2.0,
#   matplotlib~=3.7.1 (qsensoropt's pins), scipy (imported by qsensoropt.utils).
#   qsensoropt's "jupyter" requirement is for its notebooks only and is skipped, so
#   `pip check` reports it (and "tensorflow") as missing; that is expected.
# - No tensorflow-probability: qsensoropt 1.1.0 does not import it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QSENSOROPT_VENV:-$ROOT/.venv-qsensoropt}"
PYTHON="${PYTHON:-python3.11}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "qsensoropt_venv.sh: $PYTHON not found; qsensoropt needs Python 3.10 or 3.11" >&2
    exit 1
fi
"$PYTHON" - <<'PY' || { echo "qsensoropt_venv.sh: need Python 3.10 or 3.11 (qsensoropt requires <3.12)" >&2; exit 1; }
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 11) else 1)
PY

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q \
    "tensorflow-cpu==2.12.0" \
    "numpy>=1.22,<1.24" \
    "pandas~=1.5" \
    "progressbar2~=4.2.0" \
    "scipy<1.12" \
    "matplotlib~=3.7.1"
"${PIP[@]}" install -q --no-deps "qsensoropt==1.1.0"

# qsensoropt's source distribution: unlike the wheel it holds the examples (nv_center_dc.py),
# their published result CSVs and the trained policies behind them, which
# experiments/nv_published_compare.py evaluates. Apache-2.0, like the wheel. Kept beside the venv.
SDIST="$VENV/sdist"
if [ ! -f "$SDIST/qsensoropt-1.1.0/examples/nv_center_dc.py" ]; then
    mkdir -p "$SDIST"
    "${PIP[@]}" download -q --no-deps --no-binary :all: "qsensoropt==1.1.0" -d "$SDIST"
    tar -xzf "$SDIST/qsensoropt-1.1.0.tar.gz" -C "$SDIST"
fi

"$VENV/bin/python" -c 'import qsensoropt, tensorflow as tf, numpy as np; from importlib.metadata import version; print("qsensoropt", version("qsensoropt"), "| tensorflow", tf.__version__, "| numpy", np.__version__)'
echo "qsensoropt venv ready: $VENV"
