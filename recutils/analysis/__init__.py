"""Analyses of trained models (attention maps, divergences) that notebooks and tools share."""
