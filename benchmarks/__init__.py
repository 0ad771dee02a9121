"""Side-by-side benchmarks; results go to benchmarks/RESULTS.md."""
