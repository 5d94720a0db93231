"""`python -m dermedge.benchmark`: the worker / ONNX-export processes, else the command line."""

import sys

if "--worker" in sys.argv:
    from dermedge.benchmark.worker import main

    sys.exit(main(sys.argv))
elif "--export-onnx" in sys.argv:
    from dermedge.benchmark.onnx_export import main

    sys.exit(main(sys.argv))
else:
    from dermedge.benchmark.cli import benchmark

    benchmark(prog_name="dermedge benchmark")
