"""Parsers of the benchmarks' raw layouts; importing this package registers them all."""

from datamodules.parsers import (  # noqa: F401
    autovi,
    bmad,
    brain,
    btad,
    covid,
    dagm,
    dtd,
    headct,
    isic,
    ksdd2,
    mpdd,
    mvtec,
    mvtec_ad2,
    mvtec_loco,
    polyp,
    realiad,
    sdd,
    synthetic,
    tn3k,
    visa,
)
