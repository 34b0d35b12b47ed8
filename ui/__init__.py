"""The Panel app: browse diagnosed source–target run pairs on any tracking server (paper Figure 1)."""
