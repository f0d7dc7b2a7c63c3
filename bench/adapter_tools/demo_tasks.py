"""The demo tasks: prompt/answer generators (no downloads) and each task's LoRA shape and training budget.

Plain completion format, no chat template: the prompt ends with a cue ("Sentiment:", "JSON:" ...),
the answer starts with a space and ends with the tokenizer's EOS (<|im_end|>). Serve them through
/v1/completions with the same prompt text.
"""

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

Example = tuple[str, str]  # (prompt, answer without the leading space)


def _words(text: str) -> list[str]:
    return text.split()


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    description: str  # for the embedding router (loraplex.json)
    make: Callable[[random.Random], Example]
    lora: dict = field(default_factory=dict)  # peft.LoraConfig fields
    steps: int = 100
    lr: float = 2e-3
    max_new_tokens: int = 8


# sentiment
SUBJECTS = [
    "the pasta", "this phone", "the hotel room", "the movie", "the service", "this jacket", "the concert",
    "the battery life", "the staff", "the coffee", "this book", "the delivery", "this headset", "the seating",
    "the app", "the pizza", "the museum tour", "this laptop", "the flight", "the soundtrack", "the camera",
    "the checkout process", "the burger", "this vacuum cleaner", "the customer support", "the sequel",
    "the sofa", "the game", "the dessert", "the keyboard", "the spa", "the train ride",
]
POSITIVE = [
    "wonderful", "excellent", "amazing", "delightful", "fantastic", "superb", "great", "lovely", "perfect",
    "brilliant", "outstanding", "impressive", "charming", "flawless", "fun", "comfortable", "friendly", "tasty",
]
NEGATIVE = [
    "terrible", "awful", "disappointing", "horrible", "dreadful", "poor", "broken", "boring", "rude", "useless",
    "cheap", "noisy", "bland", "slow", "uncomfortable", "overpriced", "buggy", "filthy",
]
POSITIVE_TAILS = [
    "I would buy it again.", "Highly recommended.", "I will definitely come back.", "Worth every penny.",
    "It made my day.", "Five stars from me.", "Better than I expected.", "My whole family loved it.", "",
]
NEGATIVE_TAILS = [
    "I want my money back.", "Never again.", "Avoid it.", "What a waste of time.", "I regret buying it.",
    "One star is too many.", "Worse than I expected.", "Nobody in my family liked it.", "",
]
REVIEW_TEMPLATES = [
    "{S} was {a}. {t}", "Honestly, {s} was {a} and {s2} was {a2}. {t}", "{S} is really {a}. {t}",
    "I found {s} {a}, and {s2} felt {a2}. {t}", "What can I say: {s} was {a}. {t}", "{S}? Simply {a}. {t}",
]


def sentiment(rng: random.Random) -> Example:
    label = rng.choice(["positive", "negative"])
    adjectives, tails = (POSITIVE, POSITIVE_TAILS) if label == "positive" else (NEGATIVE, NEGATIVE_TAILS)
    s, s2 = rng.sample(SUBJECTS, 2)
    a, a2 = rng.sample(adjectives, 2)
    text = rng.choice(REVIEW_TEMPLATES).format(S=s[0].upper() + s[1:], s=s, s2=s2, a=a, a2=a2, t=rng.choice(tails))
    return f"Review: {text.strip()}\nSentiment:", label


# arithmetic
def arithmetic(rng: random.Random) -> Example:
    a, b, op = rng.randrange(10), rng.randrange(10), rng.choice("+-*")
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"Calculate: {a} {op} {b} =", str(value)


# word reversal
WORDS = _words(
    "apple river blue stone cloud green tiger paper candle window garden silver music orange forest winter "
    "summer yellow rabbit pencil bridge castle dragon planet rocket guitar island purple coffee basket "
    "mirror pillow thunder lemon violet falcon harbor meadow copper velvet anchor marble ocean maple "
    "shadow sugar lantern pepper button rainbow hammer jungle kitten ladder mountain needle olive parrot "
    "pirate puzzle quilt saddle tomato tunnel umbrella valley wagon wizard zebra cherry desert engine "
    "feather giant helmet jacket kettle lizard magnet noodle oyster pocket rose salmon turtle wheel yogurt"
)


def reverse(rng: random.Random) -> Example:
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"Reverse the words: {' '.join(words)}\nReversed:", " ".join(reversed(words))


# JSON field extraction
FIRST = _words("Maria John Aisha Kenji Lucas Sofia Omar Elena Ravi Chloe Mateo Hannah Ivan Priya Noah Fatima Leo Yuki")
LAST = _words("Lopez Smith Khan Tanaka Martin Rossi Haddad Petrova Patel Dubois Garcia Weber Novak Sharma Berg Ali")
CITIES = _words(
    "Lisbon Paris Tokyo Nairobi Toronto Madrid Berlin Chicago Mumbai Sydney Oslo Cairo Lima Seoul Dublin "
    "Vienna Denver Prague Boston Athens Manila Quito Lagos Milan"
)
JOBS = _words("nurse teacher pilot chef baker lawyer farmer dentist plumber painter engineer librarian")
BIO_TEMPLATES = [
    "{name} is {age} years old and lives in {city}.",
    "{name}, a {age}-year-old {job}, moved to {city} last year.",
    "In {city}, {name} ({age}) works as a {job}.",
    "Meet {name} from {city}, who turned {age} this spring.",
    "Our new {job}, {name}, is {age} and grew up in {city}.",
]


def extract_json(rng: random.Random) -> Example:
    name, age, city = f"{rng.choice(FIRST)} {rng.choice(LAST)}", rng.randint(18, 80), rng.choice(CITIES)
    text = rng.choice(BIO_TEMPLATES).format(name=name, age=age, city=city, job=rng.choice(JOBS))
    return f"Extract name, age and city as JSON: {text}\nJSON:", json.dumps({"name": name, "age": age, "city": city})


TASKS = [
    Task("sentiment", "Classify the sentiment of a product, restaurant or movie review as positive or negative.",
         sentiment, dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                         layers_to_transform=list(range(14, 30))),
         steps=60, lr=2e-3, max_new_tokens=3),
    Task("arithmetic", "Compute the result of single-digit addition, subtraction or multiplication.",
         arithmetic, dict(r=8, lora_alpha=8, use_rslora=True, target_modules=["up_proj", "down_proj"]),
         steps=150, lr=2e-3, max_new_tokens=4),
    Task("reverse", "Reverse the order of the words in a short list of words.",
         reverse, dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                       layers_to_transform=list(range(10, 30))),
         steps=150, lr=2e-3, max_new_tokens=14),
    Task("json_extract", "Extract a person's name, age and city from a sentence into a JSON object.",
         extract_json, dict(r=32, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                            layers_to_transform=list(range(15, 30))),
         steps=100, lr=2e-3, max_new_tokens=28),
]
