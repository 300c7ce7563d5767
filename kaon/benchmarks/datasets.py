"""Built-in prompt sets for ``kaon bench throughput --dataset-name``, no download needed.

    grounded      "repeat / fix / summarize this text" prompts over 200-500 tokens of English
                  prose (input-grounded work, where n-gram/suffix speculation finds its drafts)
    free-writing  short open-ended writing prompts (little to copy from the input)

Texts are stitched from the paragraphs below in a seeded order, so a run is reproducible.
"""

from __future__ import annotations

import random

_PARAGRAPHS = (
    "The harbour town woke slowly on winter mornings. Fishermen checked their nets by lamplight "
    "while the bakery on the corner pulled the first loaves from its oven, and the smell of bread "
    "drifted down to the water where the gulls waited on the old stone pier.",
    "A good recipe for vegetable soup starts with onions, carrots and celery cooked gently in "
    "olive oil until they are soft. Add chopped tomatoes, a handful of lentils and enough stock "
    "to cover everything, then let it simmer for forty minutes and season it with salt and pepper.",
    "The committee met on Tuesday to review the budget for the new library. Members agreed that "
    "the reading room needs better lighting, that the children's section should move to the "
    "ground floor, and that the opening hours will be extended on weekends starting next spring.",
    "Photosynthesis is the process by which green plants use sunlight to turn water and carbon "
    "dioxide into sugar and oxygen. It takes place mainly in the leaves, inside small structures "
    "called chloroplasts, which contain the pigment chlorophyll that gives plants their colour.",
    "To reset your password, open the settings page and choose the security tab. Click the button "
    "labelled change password, enter your current password once and the new password twice, and "
    "then press save. You will receive an email that confirms the change within a few minutes.",
    "The train left the station at exactly nine o'clock. Maria found a seat by the window, opened "
    "her notebook and began to write a letter to her brother, telling him about the new job, the "
    "small apartment near the river and the neighbour who played the violin every evening.",
    "Regular exercise helps the heart, the lungs and the mind. Walking for thirty minutes a day, "
    "taking the stairs instead of the lift and stretching before bed are simple habits that most "
    "people can keep, and over a few months they make a clear difference to health and mood.",
    "Our company was founded in a small garage with two computers and a lot of patience. Today we "
    "employ more than three hundred people in four countries, but we still believe in the same "
    "values: listen to the customer, keep things simple, and never ship something we do not trust.",
)

_TASKS = (
    "Repeat the following text exactly, word for word.\n\nText:\n{text}\n\nRepeated text:\n",
    "Fix the spelling mistakes in the following text and write out the corrected text in "
    "full.\n\nText:\n{text}\n\nCorrected text:\n",
    "Summarize the following text, quoting its key sentences.\n\nText:\n{text}\n\nSummary:\n",
)

_TOPICS = (
    "a lighthouse keeper who finds a message in a bottle",
    "the first day of spring in a big city",
    "why people enjoy cooking for their friends",
    "a robot that learns to paint",
    "an old map discovered in a library book",
    "the sounds of a forest at night",
    "a letter to your future self",
    "a journey across a desert on a camel",
)

DATASET_NAMES = ("random", "grounded", "free-writing")


def _typos(text: str, rng: random.Random) -> str:
    """Swap two letters in about one word in eight (the "fix this text" task's input)."""
    words = text.split(" ")
    for index, word in enumerate(words):
        if len(word) > 4 and rng.random() < 0.125:
            i = rng.randrange(1, len(word) - 2)
            words[index] = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return " ".join(words)


def builtin_prompts(name: str, num_prompts: int, seed: int) -> list[str]:
    """``num_prompts`` prompt texts of the built-in set ``name`` ("grounded" or
    "free-writing").

    Raises:
        ValueError: naming ``dataset_name`` for an unknown set.
    """
    rng = random.Random(seed)
    prompts = []
    for index in range(num_prompts):
        if name == "grounded":
            paragraphs = rng.sample(_PARAGRAPHS, rng.randint(3, 6))  # ~150-330 words
            task = _TASKS[index % len(_TASKS)]
            text = "\n\n".join(paragraphs)
            if task.startswith("Fix"):
                text = _typos(text, rng)
            prompts.append(task.format(text=text))
        elif name == "free-writing":
            topic = _TOPICS[index % len(_TOPICS)]
            prompts.append(f"Write a short, original story about {topic}.\n\nStory:\n")
        else:
            raise ValueError(f"dataset_name must be one of {list(DATASET_NAMES)}, got {name!r}")
    return prompts
