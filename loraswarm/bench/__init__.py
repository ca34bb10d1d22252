"""Benchmarks (`loraswarm bench ...`): each measures its baseline in the same run."""
