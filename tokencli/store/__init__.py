"""Where tokens live: the Store contract (base.py), opened by factory.py; all the SQL."""
