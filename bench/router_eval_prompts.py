"""Off-task prompts for the router evaluation: no demo or validation adapter's task, none of router/arrow.py's
calibration prompts. A router should serve them with the base model (a fallback here is a true one)."""

GENERIC_PROMPTS = (
    "Hello, how are you today?",
    "Write a poem about the sea.",
    "Who wrote Hamlet?",
    "What are some good names for a golden retriever puppy?",
    "Describe the smell of rain on a summer afternoon.",
    "Why is the sky blue?",
    "Give me a recipe for a simple vegetable soup.",
    "What should I pack for a weekend camping trip?",
    "Tell me a joke about penguins.",
    "How do vaccines train the immune system?",
    "What is the difference between a violin and a viola?",
    "Plan a three-day trip to Rome for a family with two kids.",
    "Can you explain what a black hole is?",
    "I feel tired every afternoon. Any advice?",
    "Write a short thank-you note to a teacher.",
    "What happened at the Battle of Hastings?",
)
