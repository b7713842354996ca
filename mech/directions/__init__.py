"""Stage 5, directions: activations pooled over answer tokens (`activations`), mean-diff
misalignment directions and equal-norm random controls (`mean_diff`), ablating and adding them
(`interventions`), and per-token scores for token views (`token_scores`)."""
