"""The retriever service: `retrieval.requested` → tenant-scoped hybrid search → `retrieval.completed`."""
