"""Explanations of a detector's decisions: Grad-CAM (gradcam), LIME and KernelSHAP (attributions), one entry
point per image (core), and reasons that name the evidence (reasons)."""
