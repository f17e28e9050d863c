"""GIAB benchmarking domain code: samples, truth-set catalogue, input discovery, the local engine, SVs.

Plain functions without Prefect; `tasks/giab.py` wraps them as tasks and `flows/giab_benchmark.py` composes them.
"""
