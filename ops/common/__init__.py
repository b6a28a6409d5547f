"""The lowest room of ops/: execution switches (device, precision, progress bars) and shared value checks."""
