"""What any training stage needs: optimizer and train state, the SFT step, checkpoints,
preemption, sharding, multi-process set-up, metrics."""
