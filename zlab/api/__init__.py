"""Talking to the API: HTTP with retries and deadlines (`http`), output downloads, following a job by id,
the one job path (`jobs`) and the background event loop behind the sync facade (`loop`)."""
