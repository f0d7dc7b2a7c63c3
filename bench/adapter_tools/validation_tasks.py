"""Validation tasks: a second, disjoint set for judging routers on adapters they were not tuned on.

Formats unlike the demo tasks (bench/adapter_tools/demo_tasks.py: review sentiment, single-digit
arithmetic, word reversal, JSON extraction): unit conversion, date reformatting, alphabetical sorting,
acronyms, a title-case rewrite and a code docstring. Ranks 4..64, one MLP-only and one attention-only
adapter, other target sets and layer spans than the demo ones. Same completion format: the prompt ends
with a cue, the answer follows a space and ends with EOS.

CHAINS: composite prompts that need two adapters in sequence; the first answer fills the second prompt.
"""

import random

from bench.adapter_tools.demo_tasks import Example, Task, _words

# unit conversion (metric factors: the answer is the number with zeros appended)
UNITS = [
    ("kilometers", "meters", 1000), ("kilograms", "grams", 1000), ("liters", "milliliters", 1000),
    ("meters", "centimeters", 100), ("dollars", "cents", 100), ("centimeters", "millimeters", 10),
    ("seconds", "milliseconds", 1000), ("tonnes", "kilograms", 1000), ("euros", "cents", 100),
]


def units(rng: random.Random) -> Example:
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(1, 99)
    return f"How many {small} are in {n} {big}?\nAnswer:", str(n * factor)


# date reformatting
MONTHS = _words("January February March April May June July August September October November December")


def date_iso(rng: random.Random) -> Example:
    y, m, d = rng.randint(1950, 2035), rng.randint(1, 12), rng.randint(1, 28)
    return f"Date: {MONTHS[m - 1]} {d}, {y}\nISO format:", f"{y:04d}-{m:02d}-{d:02d}"


# alphabetical sorting
ITEMS = _words(
    "fig pear plum kiwi lime mango grape peach melon apricot banana cherry date guava lemon olive papaya "
    "quince raisin walnut almond cashew hazelnut pecan carrot onion potato radish spinach turnip bean corn "
    "leek pea celery garlic ginger pumpkin squash tofu rice wheat oat barley"
)


def _item_list(rng: random.Random) -> list[str]:
    return rng.sample(ITEMS, rng.randint(3, 5))


def sort_items(rng: random.Random, items: list[str] | None = None) -> Example:
    items = items or _item_list(rng)
    return f"Sort alphabetically: {', '.join(items)}\nSorted:", ", ".join(sorted(items))


# acronyms
PHRASE_WORDS = _words(
    "portable network graphics central processing unit random access memory local area network "
    "global positioning system frequently asked questions united nations children fund public "
    "relations human resources research development quality assurance user interface application "
    "programming interface open source software virtual private cloud machine learning model data "
    "storage service secure shell protocol internet message transfer control system"
)


def _phrase(rng: random.Random) -> str:
    return " ".join(rng.sample(sorted(set(PHRASE_WORDS)), rng.randint(2, 4)))


def acronym(rng: random.Random, phrase: str | None = None) -> Example:
    phrase = phrase or _phrase(rng)
    if rng.random() < 0.5:
        phrase = phrase.title()
    return f'The acronym of "{phrase}" is', "".join(w[0] for w in phrase.replace(",", "").split()).upper()


# style rewrite: title case
def title_case(rng: random.Random, text: str | None = None) -> Example:
    text = text or (_phrase(rng) if rng.random() < 0.5 else ", ".join(_item_list(rng)))
    return f"Rewrite in title case: {text}\n=>", " ".join(w[0].upper() + w[1:] for w in text.split(" "))


# code docstrings
OPS = [
    ("sum({v})", "Return the sum of {v}."), ("max({v})", "Return the largest item in {v}."),
    ("min({v})", "Return the smallest item in {v}."), ("len({v})", "Return the number of items in {v}."),
    ("sorted({v})", "Return {v} sorted in ascending order."), ("{v}[::-1]", "Return {v} reversed."),
    ("{v}[0]", "Return the first item of {v}."), ("{v}[-1]", "Return the last item of {v}."),
    ("set({v})", "Return the unique items of {v}."),
]
VARS = _words("items values xs nums data scores words prices names rows")
FUNCS = _words("f helper compute process run calc handle pick go util")


def docstring(rng: random.Random) -> Example:
    expr, doc = rng.choice(OPS)
    v = rng.choice(VARS)
    code = f"def {rng.choice(FUNCS)}({v}):\n    return {expr.format(v=v)}"
    return f"```python\n{code}\n```\nDocstring:", doc.format(v=v)


TASKS = [
    Task("units", "Convert a quantity between metric units (kilometers to meters, dollars to cents ...).",
         units, dict(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"]),
         steps=50, lr=3e-3, max_new_tokens=6),
    Task("date_iso", "Rewrite a date written with the month's name in ISO 8601 format (YYYY-MM-DD).",
         date_iso, dict(r=32, lora_alpha=32, target_modules=["v_proj", "o_proj", "up_proj"],
                        layers_to_transform=list(range(15, 30))),
         steps=70, lr=2e-3, max_new_tokens=12),  # digits are single tokens: 11 for " YYYY-MM-DD"
    Task("sort_items", "Sort a comma-separated list of foods alphabetically.",
         sort_items, dict(r=16, lora_alpha=16, layers_to_transform=list(range(18, 30)),
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
         steps=90, lr=3e-3, max_new_tokens=20),
    Task("acronym", "Give the acronym of a phrase: the first letter of each word, in capitals.",
         acronym, dict(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "o_proj"]),
         steps=90, lr=3e-3, max_new_tokens=5),
    Task("title_case", "Rewrite a phrase or list in title case, capitalising every word.",
         title_case, dict(r=64, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                          layers_to_transform=list(range(16, 30))),
         steps=60, lr=2e-3, max_new_tokens=20),
    Task("docstring", "Write a one-line docstring for a short Python function.",
         docstring, dict(r=16, lora_alpha=16, use_rslora=True, target_modules=["o_proj", "down_proj"]),
         steps=60, lr=3e-3, max_new_tokens=12),
]
BY_NAME = {t.name: t for t in TASKS}


def chain_title_then_acronym(rng: random.Random) -> tuple[Example, str]:
    """Title-case a phrase, then take the acronym of the result; returns (step 1, step 2's template)."""
    first = title_case(rng, _phrase(rng))
    return first, 'The acronym of "{prev}" is'


def chain_sort_then_title(rng: random.Random) -> tuple[Example, str]:
    """Sort a list, then rewrite the sorted list in title case."""
    return sort_items(rng), "Rewrite in title case: {prev}\n=>"


CHAINS = {
    ("title_case", "acronym"): (chain_title_then_acronym, lambda prev: "".join(w[0] for w in prev.split()).upper()),
    ("sort_items", "title_case"): (chain_sort_then_title, lambda prev: " ".join(w[0].upper() + w[1:]
                                                                                for w in prev.split(" "))),
}
