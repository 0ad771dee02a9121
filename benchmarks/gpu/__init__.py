"""The one-command GPU check: ``bash benchmarks/gpu/check.sh`` (``python -m benchmarks.gpu``).

Kept free of imports: ``python -m benchmarks.gpu.wheels install`` runs before optuna and the
other wheels are on the path.
"""
