"""loraswarm: one shared base model, a LoRA adapter per company and user, a swarm over Kafka."""

__version__ = "0.1.0"
