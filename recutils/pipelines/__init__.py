"""Each paper notebook's pipeline (stages, variants, analyses) as functions a cell calls."""
