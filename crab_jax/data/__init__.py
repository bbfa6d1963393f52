"""Host-side data pipeline: audio/video decoding, preprocessing and sequence assembly."""
