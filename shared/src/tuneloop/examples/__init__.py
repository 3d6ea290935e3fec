"""Built-in example datasets."""
