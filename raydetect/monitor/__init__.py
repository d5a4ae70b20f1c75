"""Drift monitoring and the retraining trigger (`raydetect monitor`)."""
