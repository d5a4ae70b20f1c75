"""Explanations: Grad-CAM heatmaps (and, later, attributions and DIRE maps)."""
