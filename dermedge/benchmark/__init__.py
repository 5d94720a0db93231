"""`dermedge benchmark`: latency versus accuracy of every variant and runtime, side by side.

See `dermedge.benchmark.core` for what is measured and how; `python -m dermedge.benchmark
--worker ...` is the worker process it starts for each variant.
"""

from dermedge.benchmark.cli import benchmark

__all__ = ["benchmark"]
