"""Prefect @task wrappers around mera.stages: cache keys, retries, result storage. Thin."""
