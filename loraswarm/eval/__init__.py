"""The personalization benchmark: generated or external tenant data, conditions, scoring, report."""
