"""Model cards for pretrained and grown models (templates: package data in `growlm/cards/templates/`, which the
repository's `model_cards/` links to)."""

from growlm.cards.card import render_model_card, write_model_card

__all__ = ["render_model_card", "write_model_card"]
