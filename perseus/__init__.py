"""Perseus: the instance registry and health network for Livermore's exchange connectors."""
