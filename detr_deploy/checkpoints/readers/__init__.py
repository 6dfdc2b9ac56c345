"""Checkpoint readers, one module per model family (plus ``unsupported``, for families no module reads).

Each module exports ``READERS``: a tuple of ``candidate.Reader``, one per format the family comes in. The table
(``checkpoints.table``) finds the modules here by themselves, so a new family is one new module; nothing else lists
the families.
"""
