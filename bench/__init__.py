"""``make bench``: measure insert_data against plain sqlite3 and the naive ORM loop."""
