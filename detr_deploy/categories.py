"""COCO category names by category id: the label indices of the official DETR (91 classes) and DETR-panoptic
(250 classes) checkpoints are COCO category ids. Ids that name no category are "N/A", as in the official demos."""

# id name, one per line: the 80 COCO "thing" categories (ids 1-90).
_THINGS = """
1 person|2 bicycle|3 car|4 motorcycle|5 airplane|6 bus|7 train|8 truck|9 boat|10 traffic light|11 fire hydrant
13 stop sign|14 parking meter|15 bench|16 bird|17 cat|18 dog|19 horse|20 sheep|21 cow|22 elephant|23 bear|24 zebra
25 giraffe|27 backpack|28 umbrella|31 handbag|32 tie|33 suitcase|34 frisbee|35 skis|36 snowboard|37 sports ball
38 kite|39 baseball bat|40 baseball glove|41 skateboard|42 surfboard|43 tennis racket|44 bottle|46 wine glass|47 cup
48 fork|49 knife|50 spoon|51 bowl|52 banana|53 apple|54 sandwich|55 orange|56 broccoli|57 carrot|58 hot dog
59 pizza|60 donut|61 cake|62 chair|63 couch|64 potted plant|65 bed|67 dining table|70 toilet|72 tv|73 laptop
74 mouse|75 remote|76 keyboard|77 cell phone|78 microwave|79 oven|80 toaster|81 sink|82 refrigerator|84 book
85 clock|86 vase|87 scissors|88 teddy bear|89 hair drier|90 toothbrush
"""
# The 53 COCO-panoptic "stuff" categories (ids 92-200).
_STUFF = """
92 banner|93 blanket|95 bridge|100 cardboard|107 counter|109 curtain|112 door-stuff|118 floor-wood|119 flower
122 fruit|125 gravel|128 house|130 light|133 mirror-stuff|138 net|141 pillow|144 platform|145 playingfield
147 railroad|148 river|149 road|151 roof|154 sand|155 sea|156 shelf|159 snow|161 stairs|166 tent|168 towel
171 wall-brick|175 wall-stone|176 wall-tile|177 wall-wood|178 water-other|180 window-blind|181 window-other
184 tree-merged|185 fence-merged|186 ceiling-merged|187 sky-other-merged|188 cabinet-merged|189 table-merged
190 floor-other-merged|191 pavement-merged|192 mountain-merged|193 grass-merged|194 dirt-merged|195 paper-merged
196 food-other-merged|197 building-other-merged|198 rock-merged|199 wall-other-merged|200 rug-merged
"""


def _parse(text: str) -> dict[int, str]:
    entries = (item.strip() for line in text.strip().splitlines() for item in line.split("|"))
    return {int(item.split(" ", 1)[0]): item.split(" ", 1)[1] for item in entries if item}


COCO_THINGS = _parse(_THINGS)
COCO_STUFF = _parse(_STUFF)


def coco_class_names(num_classes: int, panoptic: bool) -> list[str]:
    """Names indexed by label for a COCO-trained model with ``num_classes`` labels."""
    names = {**COCO_THINGS, **(COCO_STUFF if panoptic else {})}
    return [names.get(label, "N/A") for label in range(num_classes)]


def coco_contiguous_names() -> list[str]:
    """The 80 COCO thing names indexed 0..79 in category-id order: the labels of 80-class heads (RT-DETR,
    mmdetection), which official post-processing maps back to category ids."""
    return [COCO_THINGS[category] for category in sorted(COCO_THINGS)]


def coco_stuff_labels(num_classes: int) -> list[int]:
    """Labels that are "stuff" (amorphous regions merged per class in panoptic output)."""
    return [label for label in range(num_classes) if label in COCO_STUFF]


def class_metadata(config, class_names=None) -> dict[str, str]:
    """The export metadata naming a model's labels: the checkpoint's own ``class_names`` when it has them, else
    COCO names for heads of COCO's size (91 detection or 250 panoptic labels), else class_<i>; panoptic models also
    list their stuff labels."""
    import json

    from detr_deploy import contract

    # Panoptic models are those that output masks (their labels include stuff).
    panoptic = contract.OUTPUT_MASKS in config.output_names
    if class_names is not None:
        names = list(class_names)
        stuff = [label for label, name in enumerate(names) if name in COCO_STUFF.values()] if panoptic else []
    elif config.num_classes == (250 if panoptic else 91):
        names, stuff = coco_class_names(config.num_classes, panoptic), coco_stuff_labels(config.num_classes)
    elif config.num_classes == len(COCO_THINGS) and not panoptic:
        names, stuff = coco_contiguous_names(), []
    else:
        names, stuff = [f"class_{label}" for label in range(config.num_classes)], []
    metadata = {contract.META_CLASS_NAMES: json.dumps(names)}
    if panoptic:
        metadata[contract.META_STUFF_LABELS] = json.dumps(stuff)
    return metadata
