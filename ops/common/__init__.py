"""The lowest room of ops/: execution switches (device, precision, progress bars), shared value checks and the
old-name shims."""
