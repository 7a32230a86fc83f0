"""Building blocks of the recipes under configs/ (one module per downstream consumer)."""
