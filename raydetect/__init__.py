"""raydetect: tell AI-generated images from real photographs at scale, on Ray."""

__version__ = "0.1.0"
