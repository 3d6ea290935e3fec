"""A second task, not support tickets: extract an order from a customer's message as JSON.

Rows in the article's form::

    {"instruction": "Extract the order from this message as JSON with the fields product,
                     quantity, city and express.",
     "input": "Hello, could you send 3 desk lamps to Lyon? ... No rush.",
     "output": "{\"product\": \"desk lamp\", \"quantity\": 3, \"city\": \"Lyon\", \"express\": false}"}

Seeded and varied: the fields are drawn independently and written into one of several message
shapes (quantity as a digit or a word, the city early or late, express asked for in different
words or not at all, filler sentences), so a model has to read the message to answer.
"""

from __future__ import annotations

import json
import random

INSTRUCTION = ("Extract the order from this message as JSON with the fields product, quantity, "
               "city and express.")
PRODUCTS = ["desk lamp", "office chair", "standing desk", "monitor arm", "keyboard", "webcam",
            "headset", "bookshelf", "filing cabinet", "whiteboard", "printer", "router",
            "coffee machine", "water bottle", "backpack", "notebook"]
CITIES = ["Lyon", "Berlin", "Madrid", "Oslo", "Porto", "Vienna", "Dublin", "Krakow", "Turin",
          "Ghent", "Bergen", "Seville", "Leeds", "Graz", "Malmo", "Utrecht"]
WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
         9: "nine", 10: "ten", 12: "twelve"}
GREETINGS = ["Hello,", "Hi team,", "Good morning,", "Dear sales,", "Hey there,"]
FILLERS = ["We are setting up a new office.", "Thanks for the quick service last time.",
           "Our finance team will pay by transfer.", "Please use the usual billing address.",
           "Let me know if anything is out of stock.", "We loved the last batch."]
EXPRESS = ["We need it urgently, please ship express.", "Please use express delivery.",
           "It has to arrive tomorrow, so express shipping please."]
NO_RUSH = ["No rush.", "Standard shipping is fine.", "Whenever it is convenient.", ""]
SHAPES = [
    "{greet} could you send {qty} {item} to {city}? {filler} {speed}",
    "{greet} {filler} We would like to order {qty} {item}, delivered to our {city} office. {speed}",
    "{greet} please ship {qty} {item}. Destination: {city}. {speed} {filler}",
    "{greet} {speed} Order: {qty} x {item} for the {city} team. {filler}",
]


def _plural(item: str, n: int) -> str:
    if n == 1:
        return item
    return item[:-1] + "ves" if item.endswith("shelf") else item + ("es" if item.endswith(("sh", "ch", "x")) else "s")


def make_order(rng: random.Random) -> dict[str, str]:
    product, city = rng.choice(PRODUCTS), rng.choice(CITIES)
    quantity = rng.choice([1, 2, 3, 4, 5, 6, 8, 10, 12])
    express = rng.random() < 0.4
    qty = WORDS[quantity] if rng.random() < 0.4 and quantity in WORDS else str(quantity)
    text = rng.choice(SHAPES).format(
        greet=rng.choice(GREETINGS), qty=qty, item=_plural(product, quantity), city=city,
        filler=rng.choice(FILLERS), speed=rng.choice(EXPRESS) if express else rng.choice(NO_RUSH))
    output = {"product": product, "quantity": quantity, "city": city, "express": express}
    return {"instruction": INSTRUCTION, "input": " ".join(text.split()),
            "output": json.dumps(output)}


def generate(n: int, seed: int = 7) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [make_order(rng) for _ in range(n)]
