"""What the routes and the worker do to the records and files, in one place each (the routes parse
and answer; the Celery task is a thin caller)."""
