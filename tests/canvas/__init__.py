"""Canvas: signatures, chains, groups and chords."""
