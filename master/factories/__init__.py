"""One module per builder, each a ``factory(config) -> BuildFactory``: the sequence of named stages."""
