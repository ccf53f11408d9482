"""Learning: feedback -> datasets -> LoRA training -> evaluation -> gate -> registry."""
