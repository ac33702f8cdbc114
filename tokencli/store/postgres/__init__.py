"""The shared store: PostgreSQL through psycopg 3, for several hosts."""
