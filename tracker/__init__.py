"""Touchpoint Tracker: real-time customer-journey tracking."""

__version__ = "0.1.0"
