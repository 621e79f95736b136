"""mera: merging pretrained adapters for few-shot learning (the library; no orchestration)."""
