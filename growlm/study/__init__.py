"""Growth studies: arms x seeds through the pipeline's stages, the saving at equal loss with seeds and error bars."""
