"""The object words of AA-CLIP's prompts: their hand-written description of each class (dataset/constants.py
REAL_NAMES at 53db195), keyed by zsad's dataset and category ids. Light: no torch."""

from __future__ import annotations

from collections.abc import Sequence

_MEDICAL_SCAN = "scan"
_COLON = "colon endoscopy image"

AUTHORS_OBJECT_WORDS: dict[str, dict[str, str]] = {
    "mvtec": {
        "bottle": "dark bottle",
        "cable": "top view of three cables",
        "capsule": "black and orange capsule",
        "carpet": "gray carpet",
        "grid": "metal or plastic mesh",
        "hazelnut": "single brown hazelnut",
        "leather": "brown leather",
        "metal_nut": "metal nut which has four notched edges",
        "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
        "screw": "screw",
        "tile": "speckled tile surface",
        "transistor": "a three-legged transistor placed vertically",
        "toothbrush": "toothbrush head",
        "wood": "wood surface",
        "zipper": "a black zipper",
    },
    "visa": {
        "candle": "candle",
        "pcb3": "infrared sensor pcb module",
        "capsules": "capsules",
        "pipe_fryum": "pipe-shaped fryum",
        "pcb4": "battery charging pcb module",
        "macaroni2": "scattered yellow macaroni",
        "pcb2": "integrated circuits board",
        "chewinggum": "chewing gum",
        "macaroni1": "orange macaroni",
        "cashew": "cashew nut",
        "fryum": "wheel-shaped fryum snack",
        "pcb1": "dual ultrasonic distance sensor pcb module",
    },
    "mpdd": {
        "connector": "metal clamps with black adjustment knobs",
        "tubes": "scattered metal objects",
        "metal_plate": "blue rectangular metal plate with a notch on one side",
        "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
        "bracket_brown": (
            "brown L-shaped metal bracket with smooth, glossy finish and multiple mounting holes along its arms"
        ),
        "bracket_black": "black ornamental metal bracket with spiral design attached to a rectangular frame",
    },
    "btad": {
        "01": (
            "Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling "
            "a stylized wave or energy field radiating outward."
        ),
        "02": "vertical fabric lines in warm, dusty pink and beige tones",
        "03": "oval concentric circular rings in gradient shades of blue and white",
    },
    "bmad": {"Brain": _MEDICAL_SCAN, "Liver": _MEDICAL_SCAN, "Retina_RESC": _MEDICAL_SCAN},
    "clinicdb": {"clinicdb": _COLON},
    "colondb": {"colondb": _COLON},
    "kvasir": {"kvasir": _COLON},
}


def authors_object_words(
    categories: Sequence[str], datasets: Sequence[str], fallback: Sequence[str]
) -> list[str]:
    """Their description of each category; ``fallback`` (zsad's object word) where their table has none
    (their code stops with an assertion there)."""
    return [
        AUTHORS_OBJECT_WORDS.get(dataset, {}).get(category, word)
        for category, dataset, word in zip(categories, datasets, fallback, strict=True)
    ]
