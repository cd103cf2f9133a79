"""Benchmark scripts for a GPU machine: scripts/gpu_check.sh and its Python drivers."""
