"""Analyses: pure queries over a model and a target (cost, roofline, sensitivity)."""
