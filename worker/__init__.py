"""Worker room: Celery workers that load models once per process and run batched inference."""
