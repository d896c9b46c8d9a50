"""Statistics shared by data, annotate, training and eval: bootstrap CIs, agreement, text statistics."""
