"""Training: recipes, the loop, task adapters, data-parallel helpers."""
