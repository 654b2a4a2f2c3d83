"""RL with verifiable rewards: GRPO-family losses, advantages, sampling filters, controllers and the trainer."""
