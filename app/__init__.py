"""Service layer: FastAPI application."""
