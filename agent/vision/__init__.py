"""Vision: images in, faces out: detection, alignment, embedding and the quality gate."""
