"""CHAIR (Caption Hallucination Assessment with Image Relevance): lexicon, parser, metrics."""
