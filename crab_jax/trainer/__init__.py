"""Training: model config from the run config, trainable selection, optimizer, state, step, loop."""
