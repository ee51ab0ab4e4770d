"""Data plane of the build farm: Celery workers that build stages with Buildah."""
