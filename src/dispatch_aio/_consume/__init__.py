"""The consumer's parts: reading, scheduling, groups, partitions and leases."""
