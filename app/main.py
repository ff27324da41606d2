"""The FastAPI application."""

from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI(
        title="trashcam",
        summary="Explainable waste-image recognition: material classes with Grad-CAM heatmaps.",
        version="0.1.0",
    )

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    return app


app = create_app()
