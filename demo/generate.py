"""Write the demo catalog and judgments: synthetic home-improvement products and shopper queries.

Deterministic and standard library only: the same seed writes byte-identical files on every
machine and every Python 3.11+. Run from anywhere:

    python demo/generate.py            # (re)write demo/catalog.csv and demo/relevance.csv
    python demo/generate.py --check    # exit 1 if the files on disk differ from what it would write

Every product is built from a product type (a title template and attribute slots), and every
query from one product's type and some of its attributes, so a judgment's grade follows from
the attributes: the same type with every queried attribute equal is relevant (2.67 or 3.0),
the same type with a queried attribute different is partially relevant (2.0 or 2.33), another
type is irrelevant (1.33 or 1.67 within the department, 1.0 or 1.33 from another one). A grade
is a mean of three judges' grades on 1..3, as in the public search-relevance data sets.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SEED = 1729
FIRST_UID = 100001
TARGET_QUERIES = 285
MAX_RELEVANT = 4
# A query that names attributes names more of them until it matches at most this many products.
SPECIFIC = 2
DESCRIPTION_SHARE = 0.5
BRAND_SHARE = 0.45
TYPO_SHARE = 0.08
PARTIAL_SHARE = 0.4
SECOND_IRRELEVANT_SHARE = 0.12
# How many attributes a query names: 0 (just the product type), 1 or 2.
ATTRIBUTE_WEIGHTS = (0.05, 0.45, 0.5)

DEMO_DIR = Path(__file__).resolve().parent
CATALOG_HEADER = ("product_uid", "title", "description")
JUDGMENTS_HEADER = ("query", "product_uid", "relevance")


# --------------------------------------------------------------------------------------------
# Product types


@dataclass(frozen=True)
class Value:
    """One attribute value: as a title writes it, and as shoppers type it (none: never typed)."""

    title: str
    query: tuple[str, ...] = ()


@dataclass(frozen=True)
class Slot:
    name: str
    values: tuple[Value, ...]
    queryable: bool = True


@dataclass(frozen=True)
class ProductType:
    key: str
    department: str
    template: str
    terms: tuple[str, ...]
    slots: tuple[Slot, ...]
    count: int
    descriptions: tuple[str, ...]
    related: tuple[str, ...] = ()


def v(title: str, *query: str) -> Value:
    """A value shoppers type as given, or by default as the title in lower case."""
    return Value(title, query or (title.lower().replace("-", " "),))


def slot(name: str, *values: Value) -> Slot:
    return Slot(name, values)


def fixed(name: str, *titles: str) -> Slot:
    """A slot that varies titles but that no query names (colour of a cord, a case's area)."""
    return Slot(name, tuple(Value(t) for t in titles), queryable=False)


def inch(size: str, *extra: str) -> Value:
    spoken = size.replace("-", " ")
    return Value(f"{size} in.", (f"{spoken} in", f"{spoken} inch", f'{spoken}"', *extra))


def feet(n: int) -> Value:
    return Value(f"{n} ft.", (f"{n} ft", f"{n}ft", f"{n} foot"))


def volt(n: int) -> Value:
    return Value(f"{n}-Volt", (f"{n}v", f"{n} volt"))


def gallons(n: int) -> Value:
    return Value(f"{n} Gal.", (f"{n} gal", f"{n} gallon"))


def pack(n: int) -> Value:
    return Value(f"({n}-Pack)", (f"{n} pack", f"{n}pk", f"{n} pk"))


def pounds(n: int) -> Value:
    return Value(f"({n} lb.-Pack)", (f"{n} lb", f"{n}lb", f"{n} pound"))


def cuft(size: str) -> Value:
    return Value(f"{size} cu. ft.", (f"{size} cu ft", f"{size} cu. ft"))


def amp(n: int) -> Value:
    return Value(f"{n} Amp", (f"{n} amp", f"{n}a", f"{n} amps"))


FINISHES = {
    "Chrome": v("Chrome"),
    "Brushed Nickel": v("Brushed Nickel", "brushed nickel", "nickel"),
    "Matte Black": v("Matte Black", "matte black", "black"),
    "Oil-Rubbed Bronze": v("Oil-Rubbed Bronze", "oil rubbed bronze", "bronze"),
    "Stainless Steel": v("Stainless Steel", "stainless", "stainless steel"),
    "Black Stainless Steel": v("Black Stainless Steel", "black stainless"),
    "White": v("White"),
}

TYPES: tuple[ProductType, ...] = (
    # ---------------------------------------------------------------- power tools
    ProductType(
        "drill",
        "power tools",
        "{voltage} Cordless {chuck} Drill/Driver {kit}",
        ("cordless drill", "drill driver", "cordless drill driver", "drill"),
        (
            slot("voltage", volt(12), volt(18), volt(20)),
            slot("chuck", inch("3/8", "3/8 chuck"), inch("1/2", "1/2 chuck")),
            slot(
                "kit",
                v("Kit with 2 Batteries and Charger", "kit", "with battery", "with batteries"),
                v("(Tool Only)", "tool only", "bare tool"),
            ),
        ),
        10,
        (
            "A compact {voltage} drill/driver with a 2-speed gearbox and an LED work light.",
            "Drives screws and drills wood and metal; the {chuck} keyless chuck holds bits firmly.",
        ),
        ("impact driver",),
    ),
    ProductType(
        "impact driver",
        "power tools",
        "{voltage} {motor} Cordless 1/4 in. Hex Impact Driver {kit}",
        ("impact driver", "impact drill", "cordless impact driver"),
        (
            slot("voltage", volt(12), volt(18), volt(20)),
            slot("motor", v("Brushless"), Value("")),
            slot(
                "kit",
                v("Kit with Battery and Charger", "kit", "with battery"),
                v("(Tool Only)", "tool only", "bare tool"),
            ),
        ),
        8,
        (
            "Delivers up to 1,800 in.-lbs. of torque for driving long screws and lag bolts.",
            "A quick-release 1/4 in. hex collet takes bits in one hand.",
        ),
        ("drill",),
    ),
    ProductType(
        "circular saw",
        "power tools",
        "{blade} {power} Circular Saw {laser}",
        ("circular saw", "circ saw", "circular saws"),
        (
            slot("blade", inch("7-1/4", "7.25 in"), inch("6-1/2", "6.5 in")),
            slot(
                "power",
                v("15 Amp Corded", "corded", "15 amp"),
                v("20-Volt Cordless", "20v cordless", "cordless 20v", "cordless"),
            ),
            slot("laser", v("with Laser Guide", "laser", "with laser"), Value("")),
        ),
        8,
        (
            "Bevels 0 to 56 degrees and cuts through 2x lumber in a single pass.",
            "A {blade} carbide blade and an electric brake for quick, clean cross cuts.",
        ),
    ),
    ProductType(
        "sander",
        "power tools",
        "{disc} {power} Random Orbital Sander {extra}",
        ("orbital sander", "random orbital sander", "random orbit sander", "palm sander"),
        (
            slot("disc", inch("5"), inch("6")),
            slot(
                "power",
                v("3 Amp Corded", "corded", "3 amp"),
                v("20-Volt Cordless", "20v", "20v cordless"),
                v("12-Volt Cordless", "12v", "12v cordless"),
            ),
            slot(
                "extra",
                v("with Dust Bag", "dust bag", "with dust bag", "dust collection"),
                v("with Carrying Case", "with case", "kit"),
            ),
        ),
        8,
        (
            "Variable speed from 8,000 to 12,000 OPM for stripping and fine finishing.",
            "The hook-and-loop pad changes sanding discs in seconds.",
        ),
    ),
    # ---------------------------------------------------------------- hand tools
    ProductType(
        "hammer",
        "hand tools",
        "{weight} {handle} Claw Hammer",
        ("claw hammer", "hammer", "framing hammer"),
        (
            slot(
                "weight",
                Value("16 oz.", ("16 oz", "16oz")),
                Value("20 oz.", ("20 oz", "20oz")),
                Value("22 oz.", ("22 oz", "22oz")),
            ),
            slot(
                "handle",
                v("Fiberglass Handle", "fiberglass"),
                v("Solid Steel", "steel", "steel handle"),
                v("Hickory Handle", "wood handle", "hickory", "wooden"),
            ),
        ),
        8,
        (
            "A smooth face and a curved claw for driving and pulling nails.",
            "An anti-vibration grip reduces shock on every strike.",
        ),
    ),
    ProductType(
        "screwdriver set",
        "hand tools",
        "{pieces} {kind} Screwdriver Set",
        ("screwdriver set", "screw driver set", "screwdrivers"),
        (
            slot(
                "pieces",
                Value("6-Piece", ("6 piece", "6 pc")),
                Value("10-Piece", ("10 piece", "10 pc")),
                Value("20-Piece", ("20 piece", "20pc")),
            ),
            slot(
                "kind",
                v("Phillips and Slotted", "phillips and flat", "phillips slotted"),
                v("Precision", "precision", "small", "jewelers"),
                v("1000-Volt Insulated", "insulated", "electrician"),
            ),
        ),
        8,
        (
            "Magnetic tips hold screws in place; cushion grips give extra torque.",
            "Comes in a case that keeps every driver in its place.",
        ),
    ),
    ProductType(
        "tape measure",
        "hand tools",
        "{length} x 1 in. {feature} Tape Measure",
        ("tape measure", "measuring tape", "tape measurer"),
        (
            slot("length", feet(12), feet(16), feet(25), feet(35)),
            slot("feature", v("Magnetic Tip", "magnetic"), v("Auto-Lock", "auto lock", "locking")),
        ),
        8,
        (
            "A wide blade that stands out 11 ft. with easy-read markings.",
            "A rubber over-mold case survives drops from 10 ft.",
        ),
    ),
    ProductType(
        "wrench",
        "hand tools",
        "{size} {finish} Adjustable Wrench",
        ("adjustable wrench", "adj wrench", "wrench"),
        (
            slot("size", inch("6"), inch("8"), inch("10"), inch("12")),
            slot("finish", v("Chrome"), v("Black Oxide", "black", "black oxide")),
        ),
        8,
        (
            "A wide jaw opening and a smooth worm gear for a snug fit on nuts and bolts.",
            "Laser-etched scales on the jaw read the size at a glance.",
        ),
    ),
    # ---------------------------------------------------------------- paint
    ProductType(
        "interior paint",
        "paint",
        "{size} {colour} {finish} Interior Paint and Primer in One",
        ("interior paint", "wall paint", "paint", "paint and primer"),
        (
            slot("size", gallons(1), gallons(5)),
            slot(
                "colour",
                v("Ultra Pure White", "white", "pure white"),
                v("Silver Mist Gray", "gray", "grey", "light gray"),
                v("Harbor Navy", "navy", "navy blue", "dark blue"),
                v("Sage Green", "sage green", "sage", "green"),
                v("Warm Sand Beige", "beige", "sand"),
            ),
            slot(
                "finish",
                v("Flat"),
                v("Eggshell", "eggshell", "egg shell"),
                v("Satin"),
                v("Semi-Gloss", "semi gloss", "semigloss"),
            ),
        ),
        12,
        (
            "A scrubbable, low-odor paint and primer that covers in one coat.",
            "{finish} sheen for living rooms, bedrooms and hallways.",
        ),
    ),
    ProductType(
        "wood stain",
        "paint",
        "{size} {colour} {opacity} Exterior Wood Stain and Sealer",
        ("deck stain", "exterior wood stain", "wood stain", "fence stain"),
        (
            slot("size", gallons(1), gallons(5)),
            slot(
                "colour",
                v("Cedar Tone", "cedar"),
                v("Redwood"),
                v("Chestnut Brown", "brown", "chestnut"),
                v("Slate Gray", "gray", "grey", "slate"),
            ),
            slot(
                "opacity",
                v("Semi-Transparent", "semi transparent", "semi-transparent"),
                v("Solid Color", "solid", "solid color"),
            ),
        ),
        7,
        (
            "Protects decks, fences and siding from sun and rain.",
            "A {opacity} stain that shows the wood grain and resists mildew.",
        ),
    ),
    ProductType(
        "roller cover",
        "paint",
        "{width} x {nap} Nap Polyester Paint Roller Cover {pack}",
        ("paint roller cover", "roller cover", "paint roller", "roller covers"),
        (
            slot("width", inch("9"), inch("4")),
            slot(
                "nap",
                Value("3/8 in.", ("3/8 nap", "3/8 in nap")),
                Value("1/2 in.", ("1/2 nap", "1/2 in nap")),
                Value("3/4 in.", ("3/4 nap", "3/4 in nap")),
            ),
            slot("pack", pack(3), pack(6)),
        ),
        7,
        (
            "Lint-free covers for smooth to semi-smooth walls and ceilings.",
            "Holds plenty of paint for fast, even coverage.",
        ),
        ("paint brush",),
    ),
    ProductType(
        "paint brush",
        "paint",
        "{width} {style} {bristle} Paint Brush",
        ("paint brush", "paintbrush", "brush"),
        (
            slot("width", inch("1-1/2", "1.5 in"), inch("2"), inch("2-1/2", "2.5 in"), inch("3")),
            slot("style", v("Angled Sash", "angled", "angle sash"), v("Flat Sash", "flat")),
            fixed("bristle", "Nylon Polyester", "Polyester", "Natural Bristle"),
        ),
        8,
        (
            "Tapered bristles cut in clean lines along trim and corners.",
            "For all paints and stains; rinses clean with soap and water.",
        ),
        ("roller cover",),
    ),
    # ---------------------------------------------------------------- plumbing
    ProductType(
        "pvc pipe",
        "plumbing",
        "{diameter} x {length} Schedule 40 PVC Pipe",
        ("pvc pipe", "pvc", "sch 40 pvc pipe", "schedule 40 pvc"),
        (
            slot(
                "diameter",
                inch("1/2"),
                inch("3/4"),
                inch("1"),
                inch("1-1/2", "1.5 in"),
                inch("2"),
                inch("3"),
                inch("4"),
            ),
            slot("length", feet(2), feet(10)),
        ),
        9,
        (
            "Rigid pipe for cold water lines, irrigation and drainage.",
            "Plain end; joins with PVC primer and cement.",
        ),
        ("pex pipe",),
    ),
    ProductType(
        "pex pipe",
        "plumbing",
        "{diameter} x {length} {colour} PEX-B Pipe",
        ("pex pipe", "pex tubing", "pex", "pex b pipe"),
        (
            slot("diameter", inch("1/2"), inch("3/4"), inch("1")),
            slot("length", feet(10), feet(100), feet(300)),
            slot("colour", v("Red", "red", "hot"), v("Blue", "blue", "cold"), v("White")),
        ),
        7,
        (
            "Flexible tubing for hot and cold water supply lines; bends around corners.",
            "Color-coded so hot and cold lines are easy to tell apart.",
        ),
        ("pvc pipe",),
    ),
    ProductType(
        "toilet flapper",
        "plumbing",
        "{size} {kind} Toilet Flapper",
        ("toilet flapper", "flapper", "toilet flapper valve"),
        (
            slot("size", inch("2"), inch("3")),
            slot(
                "kind",
                v("Universal"),
                v("Adjustable"),
                v("Water-Saving", "water saving"),
            ),
        ),
        6,
        (
            "Stops a running toilet; installs without tools.",
            "Chlorine-resistant rubber for a long-lasting seal.",
        ),
    ),
    ProductType(
        "water heater",
        "plumbing",
        "{capacity} {shape} {fuel} Tank Water Heater with 6-Year Warranty",
        ("water heater", "hot water heater", "tank water heater"),
        (
            slot("capacity", gallons(30), gallons(40), gallons(50)),
            slot("shape", v("Tall"), v("Short")),
            slot("fuel", v("Natural Gas", "gas", "natural gas"), v("Electric")),
        ),
        6,
        (
            "A glass-lined tank with a self-cleaning dip tube for a long service life.",
            "Recovers quickly for back-to-back showers.",
        ),
    ),
    ProductType(
        "kitchen faucet",
        "plumbing",
        "Single-Handle {style} Kitchen Faucet in {finish}",
        ("kitchen faucet", "kitchen sink faucet", "kitchen faucet with sprayer"),
        (
            slot(
                "style",
                v("Pull-Down Sprayer", "pull down", "pulldown"),
                v("Pull-Out Sprayer", "pull out"),
                v("Side Sprayer", "side spray", "with side sprayer"),
            ),
            slot(
                "finish",
                FINISHES["Stainless Steel"],
                FINISHES["Matte Black"],
                FINISHES["Chrome"],
            ),
        ),
        6,
        (
            "A high-arc spout that clears tall pots, with a sprayer for rinsing.",
            "Ceramic disc cartridge for drip-free use.",
        ),
        ("bathroom faucet",),
    ),
    # ---------------------------------------------------------------- lighting
    ProductType(
        "led bulb",
        "lighting",
        "{watts}-Watt Equivalent A19 Dimmable LED Light Bulb {colour} {pack}",
        ("led bulb", "led light bulb", "led bulbs", "a19 led bulb", "light bulb"),
        (
            slot(
                "watts",
                Value("40", ("40w", "40 watt")),
                Value("60", ("60w", "60 watt")),
                Value("75", ("75w", "75 watt")),
                Value("100", ("100w", "100 watt")),
            ),
            slot(
                "colour",
                v("Soft White 2700K", "soft white", "2700k", "warm white"),
                v("Bright White 3000K", "bright white", "3000k"),
                v("Daylight 5000K", "daylight", "5000k"),
            ),
            slot("pack", pack(4), pack(8), pack(16)),
        ),
        12,
        (
            "Uses a fraction of the energy of an incandescent bulb and lasts up to 13 years.",
            "{colour} light that dims smoothly on most dimmers.",
        ),
    ),
    ProductType(
        "flush mount",
        "lighting",
        "{width} {finish} LED Flush Mount Ceiling Light",
        ("flush mount light", "ceiling light", "flush mount ceiling light", "ceiling fixture"),
        (
            slot("width", inch("11"), inch("13"), inch("15")),
            slot(
                "finish",
                FINISHES["Brushed Nickel"],
                FINISHES["Matte Black"],
                FINISHES["Oil-Rubbed Bronze"],
                FINISHES["White"],
            ),
        ),
        8,
        (
            "A low-profile fixture for hallways, bedrooms and closets.",
            "Integrated LED with a frosted acrylic diffuser; no bulbs to change.",
        ),
        ("pendant",),
    ),
    ProductType(
        "flood light",
        "lighting",
        "{finish} {heads} {sensor} Outdoor LED Flood Light",
        ("outdoor flood light", "led flood light", "security light", "flood light"),
        (
            slot(
                "finish",
                v("Bronze"),
                v("White"),
            ),
            slot("heads", v("2-Head", "2 head", "double"), v("3-Head", "3 head", "triple")),
            slot(
                "sensor",
                v("Motion-Activated", "motion sensor", "motion"),
                v("Dusk-to-Dawn", "dusk to dawn", "photocell"),
            ),
        ),
        7,
        (
            "Lights driveways and yards with up to 3,000 lumens.",
            "Adjustable heads aim light where it is needed; weather-resistant housing.",
        ),
    ),
    ProductType(
        "pendant",
        "lighting",
        "1-Light {finish} Pendant Light with {shade} Shade",
        ("pendant light", "kitchen pendant", "hanging light", "pendant lighting"),
        (
            slot(
                "finish",
                FINISHES["Matte Black"],
                v("Brushed Brass", "brass", "gold"),
                FINISHES["Brushed Nickel"],
            ),
            slot(
                "shade",
                v("Clear Glass", "glass", "clear glass"),
                v("Metal Dome", "metal", "dome"),
                v("Seeded Glass", "seeded glass"),
            ),
        ),
        7,
        (
            "Hangs over a kitchen island or dining table on an adjustable cord.",
            "Takes one medium-base bulb of up to 60 watts (not included).",
        ),
        ("flush mount",),
    ),
    # ---------------------------------------------------------------- electrical
    ProductType(
        "extension cord",
        "electrical",
        "{length} {gauge} {use} Extension Cord, {colour}",
        ("extension cord", "ext cord", "extension cords", "power cord"),
        (
            slot("length", feet(6), feet(15), feet(25), feet(50), feet(100)),
            slot("gauge", v("16/3"), v("14/3"), v("12/3", "12/3", "12 gauge")),
            slot("use", v("Indoor"), v("Outdoor")),
            fixed("colour", "Orange", "Green", "Black", "White"),
        ),
        9,
        (
            "A flexible vinyl jacket that stays supple in the cold.",
            "A lighted end shows when power is on.",
        ),
    ),
    ProductType(
        "wire",
        "electrical",
        "{length} {gauge} Solid Copper NM-B Wire with Ground",
        ("nm-b wire", "electrical wire", "house wire", "copper wire"),
        (
            slot("length", feet(25), feet(50), feet(100), feet(250)),
            slot("gauge", v("14/2"), v("12/2"), v("10/3"), v("12/3")),
        ),
        7,
        (
            "For branch circuits in dry indoor locations.",
            "Sold by the coil; jacket colour shows the gauge.",
        ),
    ),
    ProductType(
        "outlet",
        "electrical",
        "{amps} {kind} Outlet, {colour}",
        ("outlet", "receptacle", "electrical outlet", "wall outlet"),
        (
            slot("amps", amp(15), amp(20)),
            slot(
                "kind",
                v("Tamper-Resistant Duplex", "tamper resistant", "tr"),
                v("GFCI", "gfci", "gfi"),
                v("Tamper-Resistant Decorator", "decorator", "decorator style"),
            ),
            slot("colour", v("White"), v("Light Almond", "almond", "light almond"), v("Black")),
        ),
        8,
        (
            "Back and side wiring with a self-grounding clip.",
            "Meets current code for new construction and remodels.",
        ),
        ("switch",),
    ),
    ProductType(
        "switch",
        "electrical",
        "15 Amp {kind} {style} Light Switch, {colour}",
        ("light switch", "wall switch", "switch"),
        (
            slot("kind", v("Single-Pole", "single pole"), v("3-Way", "3 way", "three way")),
            slot("style", v("Toggle"), v("Rocker", "rocker", "decorator", "paddle")),
            slot("colour", v("White"), v("Light Almond", "almond", "light almond")),
        ),
        6,
        (
            "Quiet action; a residential-grade switch for everyday lighting.",
            "Fits a standard wall plate; screws included.",
        ),
        ("outlet",),
    ),
    ProductType(
        "breaker",
        "electrical",
        "{amps} {poles} Circuit Breaker",
        ("circuit breaker", "breaker", "breakers"),
        (
            slot("amps", amp(15), amp(20), amp(30), amp(50)),
            slot("poles", v("Single-Pole", "single pole", "1 pole"), v("Double-Pole", "2 pole")),
        ),
        5,
        (
            "Plug-on breaker that trips on overload and short circuit.",
            "For load centers of the same make; clearly marked amperage.",
        ),
    ),
    # ---------------------------------------------------------------- garden
    ProductType(
        "garden hose",
        "garden",
        "5/8 in. x {length} {kind} Garden Hose",
        ("garden hose", "water hose", "hose"),
        (
            slot("length", feet(25), feet(50), feet(75), feet(100)),
            slot(
                "kind",
                v("Heavy-Duty Rubber", "rubber", "heavy duty"),
                v("Lightweight Vinyl", "lightweight", "vinyl"),
                v("Expandable"),
            ),
        ),
        9,
        (
            "Kink-resistant with crush-proof brass couplings.",
            "Stays flexible in hot and cold weather.",
        ),
    ),
    ProductType(
        "lawn mower",
        "garden",
        "{deck} {power} {drive} Lawn Mower",
        ("lawn mower", "lawnmower", "mower", "lawn mowers"),
        (
            slot("deck", inch("20"), inch("21"), inch("22")),
            slot("power", v("Gas"), v("40-Volt Cordless", "40v", "cordless", "battery")),
            slot("drive", v("Walk-Behind Push", "push"), v("Self-Propelled", "self propelled")),
        ),
        7,
        (
            "Mulches, bags or side-discharges with a height adjustment on every wheel.",
            "Folds flat for storage in a small garage.",
        ),
    ),
    ProductType(
        "mulch",
        "garden",
        "{size} Bag {colour} Dyed Hardwood Mulch",
        ("mulch", "landscape mulch", "wood mulch", "bagged mulch"),
        (
            slot("size", cuft("1.5"), cuft("2")),
            slot("colour", v("Red"), v("Black"), v("Brown")),
        ),
        6,
        (
            "Holds soil moisture and keeps weeds down in beds and borders.",
            "Color that lasts a season in sun and rain.",
        ),
        ("potting mix",),
    ),
    ProductType(
        "potting mix",
        "garden",
        "{size} {kind} Potting Mix",
        ("potting soil", "potting mix", "soil for pots"),
        (
            slot(
                "size",
                Value("8 qt.", ("8 qt", "8 quart")),
                Value("16 qt.", ("16 qt", "16 quart")),
                cuft("1"),
                cuft("2"),
            ),
            slot(
                "kind",
                v("All-Purpose", "all purpose"),
                v("Organic"),
                v("Cactus and Succulent", "cactus", "succulent"),
            ),
        ),
        5,
        (
            "A light, fast-draining mix for containers indoors and out.",
            "Feeds plants for up to 3 months.",
        ),
        ("mulch",),
    ),
    ProductType(
        "pruning shears",
        "garden",
        "{blade} {handle} Pruning Shears",
        ("pruning shears", "pruners", "hand pruner", "garden shears"),
        (
            slot("blade", v("Bypass"), v("Anvil")),
            slot(
                "handle",
                v("Cushion Grip", "cushion grip", "soft grip"),
                v("Forged Steel", "steel", "forged"),
                v("Ratchet", "ratchet", "ratcheting"),
            ),
        ),
        6,
        (
            "Cuts branches up to 3/4 in. thick with a hardened steel blade.",
            "A safety lock keeps the blades closed in a pocket.",
        ),
    ),
    # ---------------------------------------------------------------- flooring
    ProductType(
        "vinyl plank",
        "flooring",
        "{look} {thickness} x 7.1 in. W Waterproof Click Lock Luxury Vinyl Plank Flooring "
        "({area} sq. ft./case)",
        ("vinyl plank flooring", "lvp", "luxury vinyl plank", "vinyl flooring", "lvp flooring"),
        (
            slot(
                "look",
                v("Natural Oak", "natural oak", "oak"),
                v("Weathered Gray Oak", "gray oak", "grey oak", "gray"),
                v("Hickory"),
                v("Walnut"),
            ),
            slot(
                "thickness",
                Value("4 mm", ("4mm", "4 mm")),
                Value("6 mm", ("6mm", "6 mm")),
                Value("8 mm", ("8mm", "8 mm")),
            ),
            fixed("area", "23.6", "19.5", "21.3"),
        ),
        10,
        (
            "100% waterproof planks for kitchens, baths and basements.",
            "Clicks together over most existing floors without glue.",
        ),
        ("laminate", "tile"),
    ),
    ProductType(
        "laminate",
        "flooring",
        "{look} {thickness} T x 7.6 in. W Laminate Wood Flooring (21.3 sq. ft./case)",
        ("laminate flooring", "laminate floor", "laminate", "laminate wood flooring"),
        (
            slot(
                "look",
                v("Honey Oak", "honey oak", "oak"),
                v("Rustic Pine", "pine", "rustic pine"),
                v("Espresso Maple", "espresso", "dark"),
                v("Ash Gray", "gray", "grey"),
            ),
            slot(
                "thickness",
                Value("8 mm", ("8mm", "8 mm")),
                Value("10 mm", ("10mm", "10 mm")),
                Value("12 mm", ("12mm", "12 mm")),
            ),
        ),
        8,
        (
            "A scratch-resistant wear layer with a realistic embossed wood grain.",
            "Attached underlayment; lays as a floating floor.",
        ),
        ("vinyl plank", "tile"),
    ),
    ProductType(
        "tile",
        "flooring",
        "{colour} {size} Matte {material} Floor and Wall Tile (15.5 sq. ft./case)",
        ("floor tile", "tile", "floor and wall tile", "tiles"),
        (
            slot(
                "colour",
                v("Bright White", "white"),
                v("Light Gray", "gray", "grey", "light gray"),
                v("Beige Travertine Look", "beige", "travertine"),
                v("Charcoal", "charcoal", "dark gray"),
            ),
            slot(
                "size",
                Value("12 in. x 12 in.", ("12x12", "12 x 12")),
                Value("12 in. x 24 in.", ("12x24", "12 x 24")),
                Value("6 in. x 24 in.", ("6x24", "6 x 24")),
                Value("24 in. x 24 in.", ("24x24", "24 x 24")),
            ),
            slot("material", v("Porcelain"), v("Ceramic")),
        ),
        8,
        (
            "Frost-resistant and rated for floors, walls and countertops.",
            "A matte surface with a subtle stone texture.",
        ),
        ("vinyl plank", "laminate"),
    ),
    ProductType(
        "area rug",
        "flooring",
        "{colour} {size} {style} Area Rug",
        ("area rug", "rug", "area rugs"),
        (
            slot(
                "colour",
                v("Gray"),
                v("Navy", "navy", "blue"),
                v("Ivory", "ivory", "cream"),
                v("Multi-Color", "multi color", "multicolor"),
            ),
            slot(
                "size",
                Value("5 ft. x 7 ft.", ("5x7", "5 x 7")),
                Value("8 ft. x 10 ft.", ("8x10", "8 x 10")),
            ),
            fixed("style", "Geometric", "Medallion", "Distressed", "Shag"),
        ),
        7,
        (
            "A low-pile, stain-resistant rug for living rooms and bedrooms.",
            "Power-loomed polypropylene that does not shed.",
        ),
    ),
    # ---------------------------------------------------------------- kitchen appliances
    ProductType(
        "refrigerator",
        "kitchen appliances",
        "{capacity} {style} Refrigerator in {finish}",
        ("refrigerator", "fridge", "refrigerators", "refridgerator"),
        (
            slot("capacity", cuft("18"), cuft("22"), cuft("26")),
            slot(
                "style",
                v("French Door", "french door"),
                v("Side-by-Side", "side by side"),
                v("Top Freezer", "top freezer", "top mount"),
            ),
            slot(
                "finish",
                Value("Fingerprint Resistant Stainless Steel", ("stainless", "stainless steel")),
                FINISHES["Black Stainless Steel"],
                FINISHES["White"],
            ),
        ),
        9,
        (
            "Adjustable glass shelves and humidity-controlled crispers keep food fresh.",
            "An energy-efficient {style} model with an interior water dispenser.",
        ),
    ),
    ProductType(
        "dishwasher",
        "kitchen appliances",
        "{width} {control} Built-In Tall Tub Dishwasher in {finish}, {noise} dBA",
        ("dishwasher", "dish washer", "built in dishwasher"),
        (
            slot("width", inch("18"), inch("24")),
            slot("control", v("Front Control", "front control"), v("Top Control", "top control")),
            slot("finish", FINISHES["Stainless Steel"], v("Black"), FINISHES["White"]),
            fixed("noise", "44", "48", "52"),
        ),
        8,
        (
            "A third rack and a stainless tub for quiet, thorough cleaning.",
            "Sensor wash adjusts water and time to the load.",
        ),
    ),
    ProductType(
        "range",
        "kitchen appliances",
        "30 in. {capacity} Freestanding {fuel} Range with {feature} in {finish}",
        ("range", "stove", "oven range", "freestanding range"),
        (
            slot("capacity", cuft("5.0"), cuft("5.8")),
            slot("fuel", v("Gas"), v("Electric")),
            slot("finish", FINISHES["Stainless Steel"], FINISHES["Black Stainless Steel"]),
            fixed("feature", "Air Fry", "Self-Cleaning Oven", "Convection"),
        ),
        8,
        (
            "Five burners including a power burner for fast boiling.",
            "A large oven window and two adjustable racks.",
        ),
        ("microwave",),
    ),
    ProductType(
        "microwave",
        "kitchen appliances",
        "{capacity} {kind} Microwave in {finish}",
        ("microwave", "microwave oven", "microwaves"),
        (
            slot("capacity", cuft("1.1"), cuft("1.6"), cuft("1.9")),
            slot(
                "kind",
                v("Over-the-Range", "over the range", "otr", "over range"),
                v("Countertop"),
            ),
            slot(
                "finish",
                FINISHES["Stainless Steel"],
                FINISHES["Black Stainless Steel"],
                FINISHES["White"],
            ),
        ),
        8,
        (
            "Sensor cooking and a turntable for even heating.",
            "1,000 watts of power with one-touch popcorn and reheat.",
        ),
        ("range",),
    ),
    # ---------------------------------------------------------------- bath fixtures
    ProductType(
        "bathroom faucet",
        "bath fixtures",
        "{mount} {handles} Bathroom Faucet in {finish}",
        ("bathroom faucet", "bathroom sink faucet", "bath faucet", "lavatory faucet"),
        (
            slot(
                "mount",
                v("Single-Hole", "single hole", "1 hole"),
                v("4 in. Centerset", "4 in centerset", "centerset", "4 inch"),
                v("8 in. Widespread", "8 in widespread", "widespread", "8 inch"),
            ),
            fixed("handles", "Single-Handle", "2-Handle"),
            slot(
                "finish",
                FINISHES["Chrome"],
                FINISHES["Brushed Nickel"],
                FINISHES["Matte Black"],
                v("Champagne Bronze", "champagne bronze", "gold"),
            ),
        ),
        9,
        (
            "Includes a pop-up drain; flows 1.2 GPM to save water.",
            "A ceramic disc cartridge for a lifetime of drip-free use.",
        ),
        ("kitchen faucet",),
    ),
    ProductType(
        "toilet",
        "bath fixtures",
        "{pieces} {gpf} Single Flush {bowl} Toilet in White, Seat Included",
        ("toilet", "toilets", "toliet", "comfort height toilet"),
        (
            slot("pieces", v("One-Piece", "one piece", "1 piece"), v("Two-Piece", "two piece")),
            slot("gpf", Value("1.28 GPF", ("1.28 gpf", "1.28")), Value("1.6 GPF", ("1.6 gpf",))),
            slot("bowl", v("Elongated"), v("Round", "round", "round front")),
        ),
        8,
        (
            "Chair height for comfort; a powerful flush clears the bowl in one go.",
            "Glazed trapway and a slow-close seat.",
        ),
        ("toilet flapper",),
    ),
    ProductType(
        "shower head",
        "bath fixtures",
        "{sprays}-Spray {size} {kind} Shower Head in {finish}",
        ("shower head", "showerhead", "shower heads"),
        (
            fixed("sprays", "1", "5", "6"),
            slot("size", inch("5"), inch("8"), inch("10")),
            slot(
                "kind",
                v("Fixed Rain", "rain", "rainfall"),
                v("Handheld", "handheld", "hand held"),
                v("Dual 2-in-1", "dual", "2 in 1", "combo"),
            ),
            slot("finish", FINISHES["Chrome"], FINISHES["Brushed Nickel"], FINISHES["Matte Black"]),
        ),
        8,
        (
            "Easy-clean rubber nozzles prevent mineral build-up.",
            "Installs on a standard shower arm in minutes, no tools needed.",
        ),
    ),
    ProductType(
        "vanity",
        "bath fixtures",
        "{width} W x 22 in. D x 34 in. H Single Sink Bath Vanity in {colour} with {top} Top",
        ("bathroom vanity", "bath vanity", "vanity with top", "vanity"),
        (
            slot("width", inch("24"), inch("30"), inch("36"), inch("48")),
            slot(
                "colour",
                v("White"),
                v("Gray", "gray", "grey"),
                v("Espresso"),
                v("Navy Blue", "navy", "blue"),
            ),
            fixed("top", "White Cultured Marble", "Carrara Engineered Stone"),
        ),
        8,
        (
            "Soft-close doors and a drawer for bathroom essentials.",
            "Comes assembled with the top and an undermount sink.",
        ),
    ),
    # ---------------------------------------------------------------- storage
    ProductType(
        "storage tote",
        "storage",
        "{capacity} {colour} Storage Tote with Snap Lid",
        ("storage tote", "storage bin", "plastic tote", "storage totes"),
        (
            slot("capacity", gallons(12), gallons(18), gallons(27), gallons(40)),
            slot(
                "colour",
                v("Black with Yellow Lid", "black", "black and yellow"),
                v("Clear"),
                v("Gray", "gray", "grey"),
            ),
        ),
        9,
        (
            "Stackable and tough enough for the garage, attic or basement.",
            "Lid snaps shut and keeps dust out.",
        ),
    ),
    ProductType(
        "shelving",
        "storage",
        "{tiers} {material} Garage Storage Shelving Unit ({width} W x 72 in. H x {depth} D)",
        ("garage shelving", "shelving unit", "storage shelves", "garage shelves"),
        (
            slot("tiers", v("4-Tier", "4 tier", "4 shelf"), v("5-Tier", "5 tier", "5 shelf")),
            slot("material", v("Steel", "steel", "metal"), v("Resin", "plastic", "resin")),
            slot("width", inch("36", "36 wide"), inch("48", "48 wide")),
            fixed("depth", "18 in.", "24 in."),
        ),
        8,
        (
            "Each shelf holds up to 350 lb.; assembles without tools.",
            "Adjustable shelves in 1 in. steps for bins of any height.",
        ),
        ("cube organizer",),
    ),
    ProductType(
        "tool chest",
        "storage",
        "{width} W {drawers} Rolling Tool Cabinet in {colour}",
        ("tool chest", "rolling tool cabinet", "tool cabinet", "tool box on wheels"),
        (
            slot("width", inch("26"), inch("41"), inch("46")),
            slot(
                "drawers",
                Value("5-Drawer", ("5 drawer",)),
                Value("9-Drawer", ("9 drawer",)),
                Value("11-Drawer", ("11 drawer",)),
            ),
            slot("colour", v("Red"), v("Black"), v("Gloss Blue", "blue")),
        ),
        8,
        (
            "Ball-bearing drawer slides and a keyed lock.",
            "Locking casters and a side handle for moving around the shop.",
        ),
    ),
    ProductType(
        "cube organizer",
        "storage",
        "{cubes} {colour} Cube Storage Organizer",
        ("cube organizer", "cube storage", "cubby shelf", "cube shelf"),
        (
            slot(
                "cubes",
                Value("3-Cube", ("3 cube",)),
                Value("6-Cube", ("6 cube",)),
                Value("9-Cube", ("9 cube",)),
            ),
            slot(
                "colour", v("White"), v("Espresso"), v("Natural Oak", "oak", "natural"), v("Black")
            ),
        ),
        8,
        (
            "Fits standard fabric bins; stands upright or on its side.",
            "Laminated particleboard that wipes clean.",
        ),
        ("shelving",),
    ),
    # ---------------------------------------------------------------- fasteners
    ProductType(
        "wood screws",
        "fasteners",
        "{size} {drive} Bugle-Head {finish} Wood Screws {pack}",
        ("wood screws", "wood screw", "screws for wood"),
        (
            slot(
                "size",
                Value("#8 x 1-1/4 in.", ("#8 x 1 1/4", "8 x 1-1/4", "1 1/4 in")),
                Value("#8 x 2 in.", ("#8 x 2", "8 x 2", "2 in")),
                Value("#9 x 2-1/2 in.", ("#9 x 2 1/2", "9 x 2-1/2", "2 1/2 in")),
                Value("#10 x 3 in.", ("#10 x 3", "10 x 3", "3 in")),
            ),
            slot("drive", v("Phillips"), v("Star Drive", "star", "star drive", "star head")),
            slot("finish", v("Zinc-Plated", "zinc"), v("Exterior Coated", "exterior", "outdoor")),
            slot("pack", pounds(1), pounds(5)),
        ),
        9,
        (
            "Sharp points start without a pilot hole; a deep thread holds tight.",
            "For framing, decks and general woodworking.",
        ),
        ("drywall screws",),
    ),
    ProductType(
        "drywall screws",
        "fasteners",
        "{size} {thread} Thread Phillips Bugle-Head Drywall Screws {pack}",
        ("drywall screws", "drywall screw", "dry wall screws"),
        (
            slot(
                "size",
                Value("#6 x 1-1/4 in.", ("1 1/4", "#6 x 1-1/4", "1-1/4 in")),
                Value("#6 x 1-5/8 in.", ("1 5/8", "#6 x 1-5/8", "1-5/8 in")),
                Value("#6 x 2 in.", ("2 in", "#6 x 2")),
            ),
            slot("thread", v("Coarse"), v("Fine")),
            slot("pack", pounds(1), pounds(5), pounds(25)),
        ),
        7,
        (
            "Phosphate-coated to resist rust and take paint and compound.",
            "{thread} threads for attaching drywall to {studs} studs.",
        ),
        ("wood screws", "anchors"),
    ),
    ProductType(
        "anchors",
        "fasteners",
        "{size} {kind} Drywall Anchors with Screws {pack}",
        ("drywall anchors", "wall anchors", "anchors", "drywall anchor"),
        (
            slot("size", Value("#8", ("#8", "no 8")), Value("#10", ("#10", "no 10"))),
            slot(
                "kind",
                v("Self-Drilling Zinc", "self drilling", "zinc", "metal"),
                v("Ribbed Plastic", "plastic", "ribbed"),
            ),
            slot("pack", pack(20), pack(50), pack(100)),
        ),
        6,
        (
            "Holds shelves, mirrors and towel bars in 1/2 in. drywall.",
            "Installs with a screwdriver; no drill needed.",
        ),
        ("drywall screws",),
    ),
    ProductType(
        "nails",
        "fasteners",
        "{size} {finish} Nails {pack}",
        ("nails", "framing nails", "nail"),
        (
            slot(
                "size",
                Value("8d x 2-1/2 in.", ("8d", "8 penny", "2 1/2 in")),
                Value("10d x 3 in.", ("10d", "10 penny", "3 in")),
                Value("16d x 3-1/2 in.", ("16d", "16 penny", "3 1/2 in")),
            ),
            slot(
                "finish",
                v("Bright Common", "bright", "common"),
                v("Hot-Dipped Galvanized", "galvanized", "hot dipped galvanized", "galv"),
            ),
            slot("pack", pounds(1), pounds(5)),
        ),
        6,
        (
            "Smooth-shank nails for framing and general construction.",
            "Sold by weight in a resealable box.",
        ),
    ),
    ProductType(
        "hex bolt",
        "fasteners",
        "{size} {finish} Hex Bolt {pack}",
        ("hex bolt", "hex bolts", "bolt", "hex head bolt"),
        (
            slot(
                "size",
                Value("1/4 in.-20 x 2 in.", ("1/4 x 2", "1/4-20 x 2")),
                Value("5/16 in.-18 x 1-1/2 in.", ("5/16 x 1 1/2", "5/16-18 x 1-1/2")),
                Value("3/8 in.-16 x 3 in.", ("3/8 x 3", "3/8-16 x 3")),
                Value("1/2 in.-13 x 4 in.", ("1/2 x 4", "1/2-13 x 4")),
            ),
            slot(
                "finish",
                v("Zinc-Plated", "zinc"),
                v("Stainless Steel", "stainless", "ss"),
                v("Hot-Dipped Galvanized", "galvanized", "galv"),
            ),
            fixed("pack", "(10-Pack)", "(25-Pack)", "(50-Pack)"),
        ),
        6,
        (
            "Grade 2 steel bolts with a full hex head for wrench or socket.",
            "For wood and metal assemblies; use with a matching nut and washer.",
        ),
    ),
)

# Invented names; none is, to our knowledge, a store brand or a registered trademark.
BRANDS: dict[str, tuple[str, ...]] = {
    "power tools": ("Torvik", "Brennex", "Quarrow"),
    "hand tools": ("Ironmoss", "Halbrook Forge", "Grindell"),
    "paint": ("Pallaton", "Hueward", "Tintmere"),
    "plumbing": ("Aquorra", "Pipewright Co.", "Flowden"),
    "lighting": ("Luminary Row", "Brightvale", "Candora"),
    "electrical": ("Voltmere", "Circuitra", "Wattlow"),
    "garden": ("Greenhollow", "Yardwick", "Fernbury"),
    "flooring": ("Plankstead", "Terravine", "Floorcroft"),
    "kitchen appliances": ("Kelvaro", "Hearthline", "Cuisora"),
    "bath fixtures": ("Bathwell & Co.", "Rivetta", "Marlowe Bath"),
    "storage": ("Stowmore", "Binderly", "Rackhaven"),
    "fasteners": ("Boltery", "Threadsure", "Fastwick"),
}


# --------------------------------------------------------------------------------------------
# Products


@dataclass
class Product:
    kind: ProductType
    values: dict[str, int]
    title: str
    description: str
    uid: int = 0

    def value(self, slot_name: str) -> Value:
        return next(s for s in self.kind.slots if s.name == slot_name).values[
            self.values[slot_name]
        ]


def _render(text: str, kind: ProductType, values: dict[str, int], extra: dict[str, str]) -> str:
    fields = {s.name: s.values[values[s.name]].title for s in kind.slots} | extra
    return " ".join(text.format(**fields).split())


def build_products(rng: random.Random) -> list[Product]:
    products: list[Product] = []
    titles: set[str] = set()
    for kind in TYPES:
        queryable = [s for s in kind.slots if s.queryable]
        combos = list(itertools.product(*(range(len(s.values)) for s in queryable)))
        if len(combos) < kind.count:
            raise ValueError(f"{kind.key}: {kind.count} products but {len(combos)} combinations")
        rng.shuffle(combos)
        for combo in combos[: kind.count]:
            for _ in range(20):  # a title is unique; re-draw what queries never name
                values = {s.name: i for s, i in zip(queryable, combo, strict=True)}
                for s in kind.slots:
                    if not s.queryable:
                        values[s.name] = rng.randrange(len(s.values))
                brand = rng.choice(BRANDS[kind.department]) if rng.random() < BRAND_SHARE else ""
                title = " ".join(f"{brand} {_render(kind.template, kind, values, {})}".split())
                if title not in titles:
                    break
            else:
                raise ValueError(f"{kind.key}: cannot make a unique title for {combo}")
            titles.add(title)
            description = ""
            if rng.random() < DESCRIPTION_SHARE:
                studs = rng.choice(("wood", "metal"))
                template = rng.choice(kind.descriptions)
                description = _render(template, kind, values, {"studs": studs})
            products.append(Product(kind, values, title, description))
    rng.shuffle(products)
    for i, product in enumerate(products):
        product.uid = FIRST_UID + i
    return products


# --------------------------------------------------------------------------------------------
# Queries and judgments

RELEVANT, PARTIAL, IRRELEVANT = "relevant", "partial", "irrelevant"


@dataclass
class Query:
    text: str
    kind: ProductType
    slots: tuple[str, ...]
    judged: list[tuple[Product, int, str]] = field(default_factory=list)  # product, sum, role


def typo(word: str, rng: random.Random) -> str:
    """One slip of the finger: a letter dropped, doubled, or two neighbours swapped."""
    i = rng.randrange(1, len(word) - 1)
    how = rng.randrange(3)
    if how == 0:
        return word[:i] + word[i + 1 :]
    if how == 1:
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def query_text(kind: ProductType, attrs: Sequence[str], rng: random.Random) -> str:
    words = rng.choice(kind.terms).split()
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if long_words and rng.random() < TYPO_SHARE:
        i = rng.choice(long_words)
        words[i] = typo(words[i], rng)
    term = " ".join(words)
    order = rng.random()
    if not attrs or order < 0.5:
        parts = [term, *attrs]
    elif order < 0.85:
        parts = [attrs[0], term, *attrs[1:]]
    else:
        parts = [*attrs, term]
    return " ".join(" ".join(parts).split())


def sum_of_grades(role: str, same_department: bool, rng: random.Random) -> int:
    """The sum of three judges' grades on 1..3; the relevance is this over 3."""
    if role == RELEVANT:
        return 9 if rng.random() < 0.55 else 8
    if role == PARTIAL:
        return 7 if rng.random() < 0.5 else 6
    if same_department:
        return 5 if rng.random() < 0.4 else 4
    return 3 if rng.random() < 0.6 else 4


def build_queries(products: list[Product], rng: random.Random) -> list[Query]:
    by_kind: dict[str, list[Product]] = {}
    for p in products:
        by_kind.setdefault(p.kind.key, []).append(p)
    related = {(a.key, b) for a in TYPES for b in a.related} | {
        (b, a.key) for a in TYPES for b in a.related
    }
    covered: set[int] = set()
    seen: set[str] = set()
    queries: list[Query] = []

    def attempt(anchor: Product) -> Query | None:
        kind = anchor.kind
        usable = [s.name for s in kind.slots if s.queryable and anchor.value(s.name).query]
        k = rng.choices(range(3), weights=ATTRIBUTE_WEIGHTS)[0]
        chosen = sorted(rng.sample(range(len(usable)), min(k, len(usable))))

        def matching() -> list[Product]:
            names = [usable[i] for i in chosen]
            return [
                p for p in by_kind[kind.key] if all(p.values[n] == anchor.values[n] for n in names)
            ]

        matches = matching()
        while chosen and len(matches) > SPECIFIC and len(chosen) < len(usable):
            chosen = sorted(
                [*chosen, rng.choice([i for i in range(len(usable)) if i not in chosen])]
            )
            matches = matching()
        names = tuple(usable[i] for i in chosen)
        attrs = [rng.choice(anchor.value(n).query) for n in names]
        text = query_text(kind, attrs, rng)
        if text in seen:
            return None
        query = Query(text, kind, names)
        others = [p for p in matches if p is not anchor]
        rng.shuffle(others)
        others.sort(key=lambda p: p.uid in covered)  # stable: the uncovered first
        for p in [anchor, *others][:MAX_RELEVANT]:
            query.judged.append((p, sum_of_grades(RELEVANT, True, rng), RELEVANT))
        if names and rng.random() < PARTIAL_SHARE:
            partial = [p for p in by_kind[kind.key] if p not in matches]
            p = rng.choice(partial)
            grade = sum_of_grades(PARTIAL, True, rng)
            if sum(p.values[n] != anchor.values[n] for n in names) > 1:
                grade = 6  # wrong in two ways: less useful
            query.judged.append((p, grade, PARTIAL))
        n_irrelevant = 2 if rng.random() < SECOND_IRRELEVANT_SHARE else 1
        same = rng.random() < 0.5
        for i in range(n_irrelevant):
            in_department = same if i == 0 else not same
            pool = [
                p
                for p in products
                if p.kind.key != kind.key
                and (p.kind.key, kind.key) not in related
                and (p.kind.department == kind.department) == in_department
            ]
            p = rng.choice(pool)
            query.judged.append((p, sum_of_grades(IRRELEVANT, in_department, rng), IRRELEVANT))
        rng.shuffle(query.judged)
        return query

    def add(anchor: Product) -> bool:
        for _ in range(10):
            query = attempt(anchor)
            if query is not None:
                seen.add(query.text)
                queries.append(query)
                covered.update(p.uid for p, _, role in query.judged if role == RELEVANT)
                return True
        return False

    order = list(products)
    rng.shuffle(order)
    for anchor in order:
        if anchor.uid not in covered:
            add(anchor)
    while len(queries) < TARGET_QUERIES:
        add(rng.choice(products))
    return queries


# --------------------------------------------------------------------------------------------
# Files


def to_csv(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def relevance(grade_sum: int) -> str:
    return str(round(grade_sum / 3, 2))


def generate(seed: int = SEED) -> tuple[list[Product], list[Query], dict[str, bytes]]:
    rng = random.Random(seed)
    products = build_products(rng)
    queries = build_queries(products, rng)
    check(products, queries)
    catalog = to_csv(
        CATALOG_HEADER, [(p.uid, p.title, p.description) for p in sorted(products, key=_uid)]
    )
    judgments = to_csv(
        JUDGMENTS_HEADER,
        [(q.text, p.uid, relevance(s)) for q in queries for p, s, _ in q.judged],
    )
    return products, queries, {"catalog.csv": catalog, "relevance.csv": judgments}


def _uid(p: Product) -> int:
    return p.uid


def check_types() -> None:
    """Keys are unique, and within a type no two values share a query form (no ambiguity)."""
    keys = [t.key for t in TYPES]
    assert len(keys) == len(set(keys)), "two product types share a key"
    for t in TYPES:
        assert all(r in keys for r in t.related), t.key
        forms = [f for s in t.slots if s.queryable for val in s.values for f in val.query]
        repeated = sorted(f for f, n in Counter(forms).items() if n > 1)
        assert not repeated, f"{t.key}: query forms {repeated} name two values"
        assert all(f == f.lower() for f in [*forms, *t.terms]), t.key


def check(products: list[Product], queries: list[Query]) -> None:
    """The promises the README makes about the data; a failure is a bug in this file."""
    check_types()
    uids = {p.uid for p in products}
    pairs = [(q.text, p.uid) for q in queries for p, _, _ in q.judged]
    assert len(pairs) == len(set(pairs)), "a (query, product) pair is judged twice"
    assert all(uid in uids for _, uid in pairs), "a judgment names an unknown product"
    assert len({q.text for q in queries}) == len(queries), "a query appears twice"
    for q in queries:
        roles = Counter(role for _, _, role in q.judged)
        assert 1 <= roles[RELEVANT] <= MAX_RELEVANT, q.text
        assert 1 <= roles[IRRELEVANT] <= 2, q.text
        assert q.text == q.text.lower() == " ".join(q.text.split()), q.text
    relevant = {p.uid for q in queries for p, _, role in q.judged if role == RELEVANT}
    assert relevant == uids, f"{len(uids - relevant)} products are relevant to no query"


def summary(products: list[Product], queries: list[Query]) -> str:
    """A Markdown table of products, queries and judged pairs per department."""
    departments = list(dict.fromkeys(t.department for t in TYPES))
    n_products = Counter(p.kind.department for p in products)
    n_types = Counter(t.department for t in TYPES)
    n_queries = Counter(q.kind.department for q in queries)
    roles: dict[str, Counter[str]] = {d: Counter() for d in departments}
    for q in queries:
        for _, _, role in q.judged:
            roles[q.kind.department][role] += 1
    lines = [
        "| department | product types | products | queries | pairs | relevant | partial "
        "| irrelevant |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in [*departments, "total"]:
        if d == "total":
            counts = sum(roles.values(), Counter())
            row = [len(TYPES), len(products), len(queries)]
        else:
            counts = roles[d]
            row = [n_types[d], n_products[d], n_queries[d]]
        row += [sum(counts.values()), counts[RELEVANT], counts[PARTIAL], counts[IRRELEVANT]]
        name = f"**{d}**" if d == "total" else d
        lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="folder for the two CSVs")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--check", action="store_true", help="compare with the files on disk; write nothing"
    )
    args = parser.parse_args(argv)
    products, queries, files = generate(args.seed)
    if args.check:
        stale = [n for n, data in files.items() if _read(args.out / n) != data]
        for name in stale:
            print(f"{args.out / name}: differs from what generate.py writes", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
        print(f"wrote {args.out / name} ({len(data):,} bytes)")
    print(summary(products, queries))
    return 0


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
