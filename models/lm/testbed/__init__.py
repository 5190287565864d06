"""The reasoning testbed: arithmetic tasks, training script, oracle and learned PRMs."""
