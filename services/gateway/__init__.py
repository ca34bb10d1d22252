"""The gateway: HTTP and Slack in, Kafka events out; outcomes back to pollers, SSE, webhooks, Slack."""
