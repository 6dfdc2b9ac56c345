"""DETR families no reader reads, named by their marks so that the refusal says what the file is.

A mark is a tensor name fragment that the models of no family reader have (a test checks it against every zoo
model and its training-only tensors). Marks are looked for outside the backbone: a backbone does not tell the
detector family, and the family readers refuse the backbones they do not build by name. When a reader for one of
these families is added, its marks move from here into that reader's module.
"""

from detr_deploy.checkpoints.candidate import NO, Candidate, Reader, Recognition, foreign

# (mark, family): the first mark found names the family. DAB-DETR builds on Conditional DETR (and DN-DETR on
# DAB-DETR): its decoder has Conditional DETR's tensors (read by readers.conditional_detr, whose recognizers refuse
# DAB-DETR's shapes), so only its own marks name it here.
MARKS = (
    ("language_model", "Grounding DINO"),
    ("ref_anchor_head", "DAB-DETR"),
    ("refpoint_embed", "DAB-DETR (or DN-DETR, built on it)"),
    ("patch_embed", "a ViT-based detector"),
    ("rpn_head.", "an R-CNN detector"),
    ("roi_head.", "an R-CNN detector"),
)
_BACKBONE_PREFIXES = ("backbone.", "module.backbone.", "detr.backbone.")
# LW-DETR-style two-stage heads: RF-DETR (read by readers.rfdetr, which refuses the LW-DETR-style files it cannot
# read) has DAB-DETR's ``refpoint_embed`` and a ViT's ``patch_embeddings``, so the marks are not looked for there.
_READ_BY_A_FAMILY_READER = "transformer.enc_out_class_embed."


def recognize_other_family(candidate: Candidate) -> Recognition:
    """``foreign(family, evidence)`` for a state dict with another family's mark outside its backbone, else NO."""
    if candidate.state is None:
        return NO
    keys = [str(key) for key in candidate.state if not str(key).startswith(_BACKBONE_PREFIXES)]
    if any(_READ_BY_A_FAMILY_READER in key for key in keys):
        return NO
    for mark, family in MARKS:
        found = next((key for key in keys if mark in key), None)
        if found is not None:
            return foreign(family, f"it has '{found}'")
    return NO


READERS = (Reader("other DETR families", "any", recognize_other_family, refuses_only=True),)
