"""Data sets and label splits: everything before the model sees a batch."""
