"""The Flower ClientApp: trains a DP student locally and returns soft labels."""
