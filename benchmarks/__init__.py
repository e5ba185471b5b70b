"""One script per question; run each from the repository root as ``python -m benchmarks.NAME``."""
