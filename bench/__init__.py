"""Benchmark scripts for a GPU machine: bench/gpu_check.sh and its Python drivers."""
