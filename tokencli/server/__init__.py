"""`tokencli serve`: sockets, the event loop, threads and signals around the HTTP layer."""
