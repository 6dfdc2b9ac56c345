"""What a checkpoint format is, whatever the family in it: one module per format (the official training code's
files, mmdetection's, transformers' directories). Family readers (``checkpoints.readers``) build on these."""
