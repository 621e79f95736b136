"""Prefect @task wrappers around mera.units: cache keys, retries, result storage. Thin."""
