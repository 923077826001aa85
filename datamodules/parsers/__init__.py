"""Parsers of the benchmarks' raw layouts; importing this package registers them all."""

from datamodules.parsers import (  # noqa: F401
    brain,
    btad,
    covid,
    dagm,
    dtd,
    headct,
    isic,
    mpdd,
    mvtec,
    polyp,
    sdd,
    synthetic,
    tn3k,
    visa,
)
