"""Stage 5, directions: activations pooled over answer tokens (`activations`), mean-diff
misalignment directions and equal-norm random controls (`mean_diff`), ablating and adding them
(`interventions`), where zero lies on a direction between the chat and a finetuned model
(`axis`), per-token scores for token views (`token_scores`), and the command line that
saves directions from judged answers (`cli`, `python -m mech.directions`)."""
