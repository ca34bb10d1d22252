"""The ingestion service: `documents.submitted` → chunks in the tenant's Weaviate shard."""
