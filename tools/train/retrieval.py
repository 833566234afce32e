"""Synthetic long-context retrieval tasks (pass-key and multi-key) for EKVA.

One definition of the task formats, used by both the trainer (token-level
construction on the GPU machine, tools/train/train.py) and the evaluation-set
builder (text-level construction, tools/evalsets/make_evalsets.py), so that the
model is trained and evaluated on the same formats.

A prompt is, as text (the tokenizer adds BOS):

    INTRO + " " + filler-with-needles + "\\n" + QUESTION

and the expected completion is " " + value. Needles are inserted at word starts
(before a space-prefixed word), so token-level insertion of separately
tokenised needles gives the same ids as tokenising the whole text (the Mistral
tokenizer never merges across the "\u2581" word boundary).
"""
from __future__ import annotations

import random

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about it.")
PASSKEY_NEEDLE = "The pass key is {value}. Remember it. {value} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"
MK_NEEDLE = "The special magic number for {name} is: {value}."
MK_QUESTION = "What is the special magic number for {name}? The special magic number for {name} is:"

ADJECTIVES = (
    "amber ancient brave bright calm clever cold crimson curious dark distant dusty eager early electric empty "
    "fancy fierce floral frozen gentle giant golden grand green hidden hollow humble icy jolly kind lazy little "
    "lively lonely loud lucky mellow misty modern narrow noble odd old orange pale patient polite proud purple "
    "quick quiet rapid rare red rough round royal rusty sandy scarlet secret sharp shiny silent silver simple "
    "sleepy slow small smooth soft solid sour spare steady sticky stormy strange sunny sweet swift tall tender "
    "tiny tired velvet violet warm wild windy wise wooden yellow young"
).split()
NOUNS = (
    "anchor apple arrow badger banner basket beacon bell bicycle blossom bottle bridge brook bucket butter cabin "
    "camel candle canyon castle cedar chair cherry circle cliff cloud comet compass copper cottage crane crystal "
    "desert diamond dolphin dragon drum eagle ember falcon feather fern field flame forest fountain fox garden "
    "glacier harbor hammer hawk helmet island jacket jungle kettle ladder lantern lemon lighthouse lizard maple "
    "meadow mirror monkey mountain needle oasis ocean orchard otter owl palace panther pebble pepper pillow pine "
    "planet pond puzzle quarry rabbit raven ribbon river rocket saddle sapphire shadow shell spider spoon statue "
    "storm summit tiger timber tower tulip turtle valley violin walrus whale willow window wolf zebra"
).split()


def rand_name(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def passkey_value(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def mk_value(rng: random.Random) -> str:
    return str(rng.randint(1000000, 9999999))


def passkey_parts(rng: random.Random) -> tuple[list[str], str, str]:
    """(needle texts, question, answer) for one pass-key prompt."""
    v = passkey_value(rng)
    return [PASSKEY_NEEDLE.format(value=v)], PASSKEY_QUESTION, v


def multikey_parts(rng: random.Random, n_keys: int = 4) -> tuple[list[str], list[tuple[str, str]]]:
    """(needle texts, [(name, value)]) for one multi-key prompt; needle i holds pair i."""
    names: list[str] = []
    while len(names) < n_keys:
        n = rand_name(rng)
        if n not in names:
            names.append(n)
    pairs = [(n, mk_value(rng)) for n in names]
    return [MK_NEEDLE.format(name=n, value=v) for n, v in pairs], pairs


def mk_question(name: str) -> str:
    return MK_QUESTION.format(name=name)
