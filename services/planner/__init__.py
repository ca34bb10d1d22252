"""The planner: breaks a request down, fans out to specialists, composes the recommendation."""
