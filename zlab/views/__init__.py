"""What a notebook shows: the Gallery (model, widget, static copy), the SweepBuilder, thumbnail tables and
the static fallbacks that keep saved notebooks readable."""
