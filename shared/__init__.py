"""What every loraswarm service shares: the events, the topics, the settings and the consumer policy.

Nothing here knows a service's business: services import from here, never from each other.
"""
