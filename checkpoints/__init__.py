"""Where representations come from: backbones with taps, checkpoint formats, the zoo, recipes."""
