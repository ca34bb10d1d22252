"""Commands contributed by the services: each module here defines `register(app, bench)`.

A module adds its own sub-commands to the root `app` (e.g. `loraswarm ingest`) and its
benchmarks to `bench` (e.g. `loraswarm bench serving`), so no shared file changes when a service
gains a command.
"""
