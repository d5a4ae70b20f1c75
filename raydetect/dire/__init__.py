"""DIRE as a detector family: fit its diffusion UNet (`fit`), make maps on Ray (`maps`), classify their
statistics (`stats`); the maths is in `raydetect.models.dire`."""
