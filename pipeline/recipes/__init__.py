"""Building blocks of the recipes under configs/ (one module per downstream consumer).

The recipes are plugins: the core never imports them. Their calibrators and the functions
config expressions may call (``"jet_constituents(events, 'FatJet', weight='puppiWeight')"``)
are declared as entry points in ``pyproject.toml`` (groups ``calibrew.calibrators`` and
``calibrew.functions``), and imported when a config names them.
"""
