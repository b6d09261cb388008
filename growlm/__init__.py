"""growlm: grow Hugging Face Llama models, pretrain them, evaluate and publish them."""

__version__ = "0.1.0"
