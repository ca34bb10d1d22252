"""Real Kafka, Weaviate and Jaeger on a machine without Docker (DESIGN.md §6).

Each service is fetched or built once into a cache (`LORASWARM_INFRA__HOME`), then started as a
background process with its data, pid file and log under `LORASWARM_INFRA__STATE_DIR`, and
health-checked before `up` returns. `loraswarm infra up|down|status [kafka|weaviate|jaeger]`
drives it; `make test` and CI use the same code.
"""
