"""POPE (Polling-based Object Probing Evaluation): question files, answer parsers, metrics."""
