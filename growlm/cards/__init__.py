"""Model cards for pretrained and grown models (templates in the repository's `model_cards/`)."""

from growlm.cards.card import render_model_card, write_model_card

__all__ = ["render_model_card", "write_model_card"]
