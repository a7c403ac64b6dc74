"""IIA (Zhang, Niwa & Kleijn, ICLR 2024): fitted step sizes for few-step samplers."""
