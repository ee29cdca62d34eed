"""Default schedule rules for functions no tuning record covers, one rule per file."""
