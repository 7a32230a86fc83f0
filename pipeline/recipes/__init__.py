"""Building blocks of the recipes under configs/ (one module per downstream consumer).

The functions of :data:`EXPRESSION_FUNCTIONS` can be called by name in any config
expression (columns, collections, aliases, cuts, histogram axes), e.g.
``"jet_constituents(events, 'FatJet', weight='puppiWeight')"``.
"""

from __future__ import annotations

from typing import Any


def expression_functions() -> dict[str, Any]:
    """The recipe functions config expressions may call, by name."""
    from pipeline.recipes.egamma import best_match_index, match_table
    from pipeline.recipes.higgsml import derived_features, post_selection_mask
    from pipeline.recipes.toptagging import jet_constituents, preprocess_constituents

    return {f.__name__: f for f in (best_match_index, match_table, derived_features,
                                    post_selection_mask, jet_constituents,
                                    preprocess_constituents)}
