"""MageAgent's benchmark harness: `python -m bench run` (see BENCHMARKS.md).

stack.py starts the real service as processes, loadgen.py drives it from a separate
process, cli.py repeats the runs for this project's configuration and the seed's, and
report.py writes the results table into BENCHMARKS.md.
"""
