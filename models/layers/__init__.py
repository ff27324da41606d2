from models.layers.attention import SqueezeExcite, create_attn, list_attn_layers

__all__ = ["SqueezeExcite", "create_attn", "list_attn_layers"]
