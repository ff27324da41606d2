"""Networks, checkpoints and explanations for waste-image recognition."""

# Importing the model files registers their builders.
from models import resnet, simple_cnn  # noqa: F401
from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
