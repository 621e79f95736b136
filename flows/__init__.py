"""Prefect flows: benchmark (prepare -> pretrain -> merge -> fewshot -> report) and the `mera` CLI."""
