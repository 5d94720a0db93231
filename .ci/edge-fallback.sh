#!/usr/bin/env bash
# The tflite_runtime fallback, for real: a second virtual environment as on older Raspberry Pi OS
# images (tflite-runtime 2.14, numpy < 2, no ai-edge-litert, no TensorFlow) runs the edge tests.
# Usage: .ci/edge-fallback.sh [pytest args...]   (VENV=.venv-tflite PYTHON=python3.11 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV=${VENV:-.venv-tflite}
PYTHON=${PYTHON:-python3.11}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "tflite-runtime==2.14.0" "numpy<2" \
    pillow opencv-python-headless click tqdm flatbuffers pytest
"$VENV/bin/python" -m pip install -q --no-deps -e .

# The runtime must be tflite_runtime, and neither LiteRT nor TensorFlow may be importable.
"$VENV/bin/python" - <<'EOF'
import importlib.util, sys
for name in ("ai_edge_litert", "tensorflow"):
    if importlib.util.find_spec(name):
        sys.exit(f"{name} is installed in the fallback venv; the check would not test tflite_runtime")
EOF
version=$("$VENV/bin/edge-classify" --version)
echo "$version"
case "$version" in
    *tflite-runtime*) ;;
    *) echo "expected the tflite-runtime interpreter, got: $version" >&2; exit 1 ;;
esac

"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/edge/test_edge*.py "$@"
