"""A PostgreSQL read replica whose failed reads are served by its primary (``base``)."""
