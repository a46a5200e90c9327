"""Training stages (sft, ...): each a thin loop over the shared engine."""
