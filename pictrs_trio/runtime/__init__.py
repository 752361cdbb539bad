"""Runtime: the command line, start-up, the service's root nursery, supervision, logging."""
