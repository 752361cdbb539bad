"""Services: ingest, render, fetch, proxy, job handlers, and the AppState they share."""
