"""GRPO post-training (DESIGN §3, stage `rl`): config, prompts, codec, rewards, the loss, the trainer, the claims experiment."""
