"""Training: the settings (`TrainConfig`), the Trainer-based fine-tune and probe, the IGIA,
the warm start from the probe's adapters, the healing registry and distillation."""
