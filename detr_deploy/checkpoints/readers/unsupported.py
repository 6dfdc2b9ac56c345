"""DETR families no reader reads, named by their marks so that the refusal says what the file is.

A mark is a tensor name fragment that the models of no family reader have (a test checks it against every zoo
model and its training-only tensors). Marks are looked for outside the backbone: a backbone does not tell the
detector family, and the family readers refuse the backbones they do not build by name. When a reader for one of
these families is added, its marks move from here into that reader's module.
"""

from detr_deploy.checkpoints.candidate import NO, Candidate, Reader, Recognition, foreign

# (mark, family): the first mark found names the family. Conditional DETR and DAB-DETR have their readers
# (readers.conditional_detr, readers.dab_detr, which refuses DN-DETR's DAB-DETR by name); DAB's Deformable DETR and
# DN-DETR build on DAB-DETR and keep its anchors.
MARKS = (
    ("language_model", "Grounding DINO"),
    ("refpoint_embed", "DAB-Deformable-DETR (or DN-DETR, built on DAB-DETR)"),
    ("patch_embed", "a ViT-based detector"),
    ("rpn_head.", "an R-CNN detector"),
    ("roi_head.", "an R-CNN detector"),
)
_BACKBONE_PREFIXES = ("backbone.", "module.backbone.", "detr.backbone.")
# Marks of files a family reader reads or refuses itself, so the marks are not looked for there: LW-DETR-style
# two-stage heads (RF-DETR, read by readers.rfdetr, which refuses the LW-DETR-style files it cannot read, has DAB-DETR's
# ``refpoint_embed`` and a ViT's ``patch_embeddings``); DAB-DETR's width/height modulation (readers.dab_detr: its
# decoder layer is Conditional DETR's, with that family's marks).
_READ_BY_A_FAMILY_READER = ("transformer.enc_out_class_embed.", "ref_anchor_head.")


def recognize_other_family(candidate: Candidate) -> Recognition:
    """``foreign(family, evidence)`` for a state dict with another family's mark outside its backbone, else NO."""
    if candidate.state is None:
        return NO
    keys = [str(key) for key in candidate.state if not str(key).startswith(_BACKBONE_PREFIXES)]
    if any(mark in key for key in keys for mark in _READ_BY_A_FAMILY_READER):
        return NO
    for mark, family in MARKS:
        found = next((key for key in keys if mark in key), None)
        if found is not None:
            return foreign(family, f"it has '{found}'")
    return NO


READERS = (Reader("other DETR families", "any", recognize_other_family, refuses_only=True),)
