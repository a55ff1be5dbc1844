"""Market-data connectors: what an instance runs while it holds its exchange's claim."""
