"""The vLLM loader: keeps vLLM's run-time LoRA adapters equal to the adapter store's current ones."""
