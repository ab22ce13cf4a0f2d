"""The service's infrastructure: settings, the artifact store and its scratch cache, the queue, typed
errors, limits, headers, pagination and observability."""
