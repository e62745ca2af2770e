"""What partner platforms integrate with: the generated AsyncAPI contract of Keel's topics."""
