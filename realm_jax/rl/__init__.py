"""The method: MRPV, EAAI, GRPO-family losses and advantages, rewards, the RL loop, RFT."""
