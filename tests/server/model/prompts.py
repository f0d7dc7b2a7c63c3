"""Prompts of varied lengths for parity tests: short ones, and some longer than one KV block."""

PROMPTS = [
    "Hi",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away,",
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
    "Translate to French: I love cheese.",
    "import numpy as np\nimport torch\n\nclass Model(torch.nn.Module):\n    def __init__(self):",
    "Water boils at",
    "List three colors of the rainbow:",
    "The history of the Roman Empire spans more than a thousand years, from the founding of the city "
    "to the fall of Constantinople. Its most famous emperor was",
    "Q: What is 12 plus 30?\nA:",
    "SELECT name, age FROM users WHERE",
    "In machine learning, overfitting happens when a model learns the noise in the training data "
    "instead of the signal. To prevent overfitting, practitioners often use techniques such as "
    "regularization, dropout, early stopping, and",
    "My favourite food is",
    "Dear Sir or Madam,\nI am writing to",
    "The mitochondria is",
    "Roses are red, violets are blue,",
    "A haiku about the sea:\n",
    "The following is a long list of fruits that grow in tropical climates around the world, including "
    "mangoes, papayas, pineapples, bananas, coconuts, guavas, passion fruits, lychees, rambutans, "
    "durians, jackfruits, and finally",
    "What is the largest planet in the solar system?",
    "x",
]
