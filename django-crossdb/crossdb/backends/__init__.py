"""Database backends of crossdb: ``crossdb.backends.replica`` for read replicas."""
