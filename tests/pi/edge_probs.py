"""Exact P(malignant) per photo through dermedge's Python API, for scripts/pi-check.

    python tests/pi/edge_probs.py MODEL IMG...

`edge-classify --json` rounds probabilities to 4 decimals; this prints the float64 values that
`EdgeModel.predict` returns (JSON floats round-trip exactly), so the x86_64 and ARM runs can be
compared bit for bit.
"""

from __future__ import annotations

import json
import sys

from dermedge.data.contract import preprocess
from dermedge.edge.runtime import EdgeModel


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    model = EdgeModel(sys.argv[1])
    probs = {
        path: float(model.predict(preprocess(path, model.contract))[0]) for path in sys.argv[2:]
    }
    print(json.dumps({"runtime": model.runtime, "model": model.name, "probs": probs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
