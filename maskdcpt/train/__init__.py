"""Training: the DeepSpeed engine, MaskDCPT pre-training, fine-tuning and their typed params groups."""
