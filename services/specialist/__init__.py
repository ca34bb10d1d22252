"""Specialist agents: answer one task with the tenant's adapter and the tenant's documents."""
