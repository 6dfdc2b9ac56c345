"""Run by the Python of an environment with the rfdetr package (not the test suite's: rfdetr needs torchvision, whose
mere presence breaks transformers there). Builds RF-DETR-N with rfdetr's own code and seeded trained-like weights,
saves its checkpoint the way rfdetr does (``export_for_roboflow``: ``{'model': state_dict, 'args': args}``, class
names in the args), and records its eager outputs for the given inputs.

    python rfdetr_peer.py OUTPUT_DIR SEED ENCODER BATCHxHEIGHTxWIDTH...

(ENCODER: rfdetr's ``encoder``, ``dinov2_windowed_small`` as RF-DETR-N or ``dinov2_registers_windowed_small``, the
DINOv2 with 4 register tokens)
writes OUTPUT_DIR/weights.pt and OUTPUT_DIR/outputs.pt ({"BxHxW": {"images", "pred_logits", "pred_boxes",
"selected"}}, selected: the encoder tokens rfdetr's two-stage selection took, in rank order).

The stand-in: torchvision's wheel beside this torch is a CUDA build whose compiled ops do not load, and
``torchvision/_meta_registrations.py`` registers fake kernels for them at import (``torchvision::nms does not
exist``). That one module is replaced by an empty one before rfdetr imports torchvision; everything else of
torchvision and all of rfdetr run as they are (the detection forward calls no compiled torchvision op).
"""

import sys
import types
from copy import copy
from pathlib import Path

CLASS_NAMES = ["cat", "dog", "traffic light", "kite", "zebra"]
QUERIES = 30


def main(output: Path, seed: int, encoder: str, shapes: list[tuple[int, int, int]]) -> None:
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torch
    from rfdetr import RFDETRNano

    torch.manual_seed(seed)
    # 30 queries, not 300: with random weights the 300th-best of ~600 encoder scores lies within float32 noise of
    # its neighbours, and a near tie may rank either way in either implementation.
    detector = RFDETRNano(pretrain_weights=None, num_classes=len(CLASS_NAMES), num_queries=QUERIES, encoder=encoder)
    model = detector.model.model.eval()
    # rfdetr zeroes its box heads and reference deltas and sets one class bias for all: with those, every query
    # has the same box size. Trained-like weights instead: fan-in scaled matrices, noised vectors and embeddings.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if tensor.dim() >= 2 and "embed" not in name.rsplit(".", 2)[-2]:
                fan_in = tensor[0].numel()
                tensor.copy_(noise * (2.0 / fan_in) ** 0.5 if tensor.dim() == 4 else noise / fan_in**0.5)
            else:
                tensor.add_(0.2 * noise)
    args = copy(detector.model.args)
    args.class_names = CLASS_NAMES
    output.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "args": args}, output / "weights.pt")
    # The encoder scores of the two-stage selection, to record which tokens rfdetr selected: the head's first call
    # in a forward scores every token (LWDETR.forward calls it again on the selected ones).
    scores = {}

    def keep(module, inputs, output):
        scores.setdefault("s", output.max(-1).values)

    model.transformer.enc_out_class_embed[0].register_forward_hook(keep)
    outputs = {}
    for batch, height, width in shapes:
        images = torch.randn(batch, 3, height, width, generator=generator)
        scores.clear()
        with torch.no_grad():
            result = model(images)
        outputs[f"{batch}x{height}x{width}"] = {
            "images": images,
            "pred_logits": result["pred_logits"],
            "pred_boxes": result["pred_boxes"],
            "selected": torch.topk(scores["s"], QUERIES, dim=1).indices,
        }
    torch.save(outputs, output / "outputs.pt")


if __name__ == "__main__":
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in sys.argv[4:]]
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], shapes)
