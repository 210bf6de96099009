"""Training: paired/synthetic data, the papers' losses and recipes, and the loop (never imported
by inference)."""
