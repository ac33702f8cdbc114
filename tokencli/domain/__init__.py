"""The domain: token format, states and rules, durations, locations, errors. Pure, no I/O."""
