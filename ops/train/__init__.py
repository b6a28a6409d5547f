"""Training: sets of networks trained with one recipe (`sets`); the trainer itself is ops.trains."""
