"""Deterministic generator of the project's prompt sets (train and bench).

No dataset hub is reachable and public benchmark questions (MT-Bench,
Spec-Bench, AlpacaEval) must stay out of the training data, so the prompts are
written here: hand-written templates for eight task categories, filled from
hand-written topic lists and seeded random numbers.

Train and bench are disjoint by construction, not only by text: each category
has a *main* pool (its topic list, or its list of problem templates for maths
and reasoning), and a fixed fifth of every main pool (the items with the smallest CRC32)
is reserved for the bench. A bench prompt therefore never shares its
topic with a train prompt. Exact-text disjointness and the absence of known
benchmark phrases are checked again after generation.

CLI:  python -m vllm_nfoxhead.training.prompts --out data/prompts [--train 2400] [--bench 80] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from vllm_nfoxhead.core.errors import NFoxHeadError

T = TypeVar("T")
SPLITS = ("train", "bench")
BENCH_SHARE = 5  # one item in BENCH_SHARE of each main pool is bench-only

# Distinctive phrases of public benchmark questions (MT-Bench, Spec-Bench,
# AlpacaEval). None of them may occur in a generated prompt.
FORBIDDEN_PHRASES = (
    "travel blog post about a recent trip to hawaii",
    "quarterly financial report",
    "comparing two popular smartphone models",
    "introverted friend",
    "vivid and unique character",
    "captivating short story beginning with",
    "intriguing opening paragraph",
    "scientifically accurate, headline",
    "embrace the role of sheldon",
    "pretend yourself to be elon musk",
    "tony stark",
    "relationship coach",
    "english translator",
    "suresh",
    "thomas is very healthy",
    "david has three sisters",
    "benjamin went to a bookstore",
    "vertices of a triangle are at points",
    "tech startup invests",
    "when rolling two dice",
    "some people got on a bus at the terminal",
    "median of two sorted arrays",
    "majority element",
    "longest common subsequence",
    "nth fibonacci",
    "photosynthesis",
    "superposition",
    "antitrust",
    "socrates",
    "the alps and rhine",
    "economic indicators",
    "named entities (people, organizations, locations)",
    "the countries, their capitals, and the languages",
    "customer reviews from different sources",
    "give three tips for staying healthy",
    "what are the three primary colors",
    "describe the structure of an atom",
)


@dataclass(frozen=True)
class Prompt:
    """One line of a prompt file."""

    id: str
    category: str
    prompt: str


class Picker:
    """Draws slot values; main pools are split between train and bench."""

    def __init__(self, rng: random.Random, split: str) -> None:
        self.rng = rng
        self.bench = split == "bench"

    def main(self, pool: Sequence[T]) -> T:
        """An item of this split's share of a main pool (see `bench_share`)."""
        return self.rng.choice(self.share(pool))

    def share(self, pool: Sequence[T]) -> list[T]:
        """This split's items of a main pool, in pool order."""
        bench = bench_share(pool)
        return [x for x in pool if (_key(x) in bench) == self.bench]

    def any(self, pool: Sequence[T]) -> T:
        return self.rng.choice(pool)

    def some(self, pool: Sequence[T], k: int) -> list[T]:
        return self.rng.sample(list(pool), k)

    def num(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class WidePicker(Picker):
    """A train picker whose main pools also hold the train-only topics of `wide_topics`.

    Used for the widened training set: same templates, many more subjects, never a
    bench-share item (those are excluded exactly as in the train split).
    """

    def __init__(self, rng: random.Random) -> None:
        from vllm_nfoxhead.training.wide_topics import WIDE_POOLS

        super().__init__(rng, "train")
        self.extra = {id(globals()[name]): pool for name, pool in WIDE_POOLS.items()}

    def main(self, pool: Sequence[T]) -> T:
        return self.rng.choice(self.share(pool) + list(self.extra.get(id(pool), ())))


def _key(item: object) -> str:
    return getattr(item, "__name__", None) or repr(item)


def bench_share(pool: Sequence[object]) -> frozenset[str]:
    """Keys of the bench-only items of a main pool: the ceil(n/5) smallest CRC32s.

    A hash rank rather than list position, so that adding a topic to a list moves
    few items between the splits.
    """
    keys = sorted((_key(x) for x in pool), key=lambda k: zlib.crc32(k.encode()))
    return frozenset(keys[: -(-len(keys) // BENCH_SHARE)])


# --------------------------------------------------------------------------
# Shared pools
# --------------------------------------------------------------------------
FIRST_NAMES = (
    "Amara", "Bilal", "Chen", "Dalia", "Emeka", "Farah", "Gustav", "Hana", "Ivan",
    "Jorge", "Keiko", "Lena", "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa",
    "Samir", "Tamsin", "Ugo", "Vera", "Wiktor", "Ximena", "Yusuf", "Zofia", "Aidan",
    "Beatriz", "Colm", "Divya", "Elif", "Femi", "Greta", "Hugo", "Ines", "Jonah",
)
SURNAMES = (
    "Okafor", "Lindqvist", "Moreau", "Tanaka", "Haddad", "Kowalski", "Ferreira",
    "Nguyen", "Brennan", "Schultz", "Costa", "Iyer", "Novak", "Adeyemi", "Larsen",
    "Mendes", "Rahman", "Whitfield", "Petrov", "Ortega",
)
TOWNS = (
    "Millbrook", "Eastharbour", "Fernvale", "Kestrel Bay", "Oakridge", "Stonemere",
    "Brightwater", "Ashford Green", "Northwick", "Larkfield", "Redcliff", "Willowmere",
)
COMPANIES = (
    "Bluefin Logistics", "Harbourlight Foods", "Quillstone Software", "Greenleaf Energy",
    "Cobalt Bicycles", "Meridian Dental", "Northstar Textiles", "Juniper Analytics",
    "Copperpot Kitchens", "Solace Health", "Tidewater Books", "Atlas Roofing",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
)


def _person(p: Picker) -> str:
    return f"{p.any(FIRST_NAMES)} {p.any(SURNAMES)}"


def _date(p: Picker) -> str:
    return f"{p.num(1, 28)} {p.any(MONTHS)} {p.num(2019, 2026)}"


# --------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------
WRITING_TOPICS = (
    "the first snow of winter", "an old lighthouse", "a city bus at midnight",
    "a grandmother's kitchen", "the smell of rain on hot pavement", "a lost umbrella",
    "a garden in late autumn", "learning to ride a bicycle", "a crowded train station",
    "the last day of school", "a cat watching birds", "a power cut during a storm",
    "a street market at dawn", "moving to a new country", "a letter never sent",
    "a library after closing time", "the sound of the sea", "a broken wristwatch",
    "a bakery on a cold morning", "a mountain hut", "the quiet after a party",
    "a kite stuck in a tree", "an abandoned funfair", "the hum of a refrigerator",
    "a first day at a new job", "a night sky far from any city", "a jar of buttons",
    "an unexpected friendship", "a river in flood", "the end of a long journey",
    "a village football match", "an empty swimming pool", "a fox crossing a road",
    "a ferry crossing in fog", "a child's drawing on the fridge", "a rooftop garden",
    "a shared umbrella", "a second-hand bookshop", "a morning run", "the smell of coffee",
)
WRITING_FORMS = (
    "a short poem", "a haiku", "a limerick", "a four-line rhyming verse",
    "a 150-word piece of flash fiction", "a diary entry", "a descriptive paragraph",
    "a sonnet", "a free-verse poem", "the opening paragraph of a novel",
)
EMAIL_PURPOSES = (
    ("my landlord", "asking for a leaking tap to be repaired"),
    ("a colleague", "asking to swap shifts next week"),
    ("a customer", "apologising for a delayed delivery"),
    ("my child's teacher", "explaining an absence"),
    ("a hiring manager", "following up after an interview"),
    ("a neighbour", "about noise late at night, kindly"),
    ("my team", "announcing a new weekly meeting time"),
    ("a supplier", "asking for a quote for 200 notebooks"),
    ("a local council", "reporting a broken street light"),
    ("a conference organiser", "asking to present a short talk"),
    ("a gym", "cancelling my membership"),
    ("a former teacher", "thanking them for their help years ago"),
)
PRODUCTS = (
    "a reusable water bottle that keeps drinks cold for 24 hours",
    "a folding electric bicycle", "a handmade ceramic teapot", "a noise-cancelling sleep mask",
    "a solar-powered phone charger", "a beginner's watercolour set", "a smart plant pot",
    "a waterproof hiking backpack", "a cast-iron frying pan", "a children's science kit",
    "an ergonomic office chair", "a board game about running a farm",
)
OCCASIONS = (
    "my sister's wedding", "a colleague's retirement", "my parents' 40th anniversary",
    "a friend's graduation", "the opening of a community garden", "a team's championship win",
    "a neighbour's 90th birthday", "the end of a charity fundraiser",
)
CLAIMS = (
    "every town should have a public library", "schools should teach cooking",
    "cities should build more cycle lanes", "people should learn a second language",
    "museums should be free to enter", "short daily walks improve wellbeing",
    "homework should be limited for young children", "repairing things beats replacing them",
    "companies should allow four-day working weeks", "everyone should learn first aid",
)
STORY_PREMISES = (
    "a robot learns to bake bread", "a shy dragon opens a café",
    "two strangers share a taxi during a storm", "a child finds a map in a library book",
    "a lighthouse keeper receives a mysterious letter", "a town's clocks all stop at once",
    "a dog tries to find its way home across the city", "an old violin plays by itself",
    "a gardener grows a pumpkin the size of a car", "a postman delivers a letter from the future",
    "a squirrel plans the perfect heist", "a girl befriends a cloud",
)
AUDIENCES = ("young children", "teenagers", "adults", "complete beginners", "a general audience")


def _writing(p: Picker) -> str:
    kind = p.num(0, 6)
    if kind == 0:
        return f"Write {p.any(WRITING_FORMS)} about {p.main(WRITING_TOPICS)}."
    if kind == 1:
        who, why = p.main(EMAIL_PURPOSES)
        tone = p.any(("polite", "friendly", "formal", "brief", "warm but professional"))
        return f"Write a {tone} email to {who} {why}."
    if kind == 2:
        words = p.any((50, 80, 100, 120))
        return f"Write a product description of about {words} words for {p.main(PRODUCTS)}."
    if kind == 3:
        return f"Write a short, heartfelt toast for {p.main(OCCASIONS)}."
    if kind == 4:
        return f"Write a persuasive paragraph arguing that {p.main(CLAIMS)}."
    if kind == 5:
        length = p.any(("very short", "short", "200-word", "bedtime"))
        return f"Write a {length} story for {p.any(AUDIENCES)} in which {p.main(STORY_PREMISES)}."
    return (
        f"Describe {p.main(WRITING_TOPICS)} using all five senses, in no more than "
        f"{p.any((4, 5, 6))} sentences."
    )


# --------------------------------------------------------------------------
# Coding
# --------------------------------------------------------------------------
CODE_TASKS = (
    "reverses the words in a sentence", "checks whether a string is a palindrome",
    "counts how often each word appears in a text", "removes duplicates from a list while keeping order",
    "returns the second largest number in a list", "converts Celsius to Fahrenheit",
    "checks whether a year is a leap year", "flattens a nested list",
    "merges two dictionaries, summing values for shared keys", "finds all prime numbers below n",
    "validates a simple email address", "splits a list into chunks of size k",
    "computes the greatest common divisor of two integers", "rotates a list by k positions",
    "returns the most common character in a string", "converts a Roman numeral to an integer",
    "checks whether two strings are anagrams", "groups words by their first letter",
    "parses a date string like 2024-03-15 into day, month and year",
    "computes a running average of a list of numbers", "capitalises the first letter of every word",
    "finds the longest word in a sentence", "converts an integer to binary without built-ins",
    "returns the indices of two numbers that add up to a target",
    "transposes a matrix given as a list of lists", "counts the vowels in a string",
    "checks whether brackets in a string are balanced", "computes the factorial of n iteratively",
    "returns the intersection of two lists without duplicates", "turns a snake_case name into camelCase",
    "reads a CSV file and returns the sum of one column", "generates a random password of length n",
    "computes the Levenshtein distance between two words", "sorts a list of tuples by their second item",
    "implements binary search on a sorted list", "finds the missing number in a list from 1 to n",
)
LANGUAGES = ("Python", "JavaScript", "Go", "Rust", "Java", "C", "TypeScript", "Ruby")
HOWTOS = (
    "read a file line by line", "sort a list of objects by a field", "make an HTTP GET request",
    "handle errors when opening a file", "measure how long a function takes to run",
    "write a unit test for a function", "parse JSON from a string", "create a simple class",
    "iterate over a dictionary or map", "format a number with two decimal places",
    "run two tasks concurrently", "read command-line arguments", "work with dates and times",
    "use a regular expression to find all numbers in a text", "write to a file safely",
)
CONCEPT_PAIRS = (
    ("a list", "a tuple", "Python"), ("let", "const", "JavaScript"),
    ("an interface", "an abstract class", "Java"), ("a stack", "a queue", "computer science"),
    ("a process", "a thread", "operating systems"), ("TCP", "UDP", "networking"),
    ("a shallow copy", "a deep copy", "Python"), ("== ", "===", "JavaScript"),
    ("a slice", "an array", "Go"), ("String", "&str", "Rust"),
    ("a hash map", "a binary search tree", "data structures"), ("git merge", "git rebase", "git"),
    ("an inner join", "a left join", "SQL"), ("recursion", "iteration", "programming"),
    ("compiled", "interpreted languages", "programming"), ("unit tests", "integration tests", "testing"),
)
SQL_TASKS = (
    ("orders(id, customer_id, total, created_at)", "returns the total spent by each customer in 2024"),
    ("employees(id, name, department, salary)", "finds the highest-paid employee in each department"),
    ("books(id, title, author, year)", "lists authors who wrote more than three books"),
    ("visits(id, page, visited_at)", "counts visits per page per day"),
    ("products(id, name, price, stock)", "finds products that are out of stock and cost more than 20"),
    ("students(id, name), grades(student_id, course, score)", "returns each student's average score"),
    ("flights(id, origin, destination, departs_at)", "finds the busiest origin airport"),
    ("tickets(id, status, opened_at, closed_at)", "computes the average time to close a ticket"),
)
BUGGY_SNIPPETS = (
    "def average(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs) - 1",
    "def is_even(n):\n    return n % 2 == 1",
    "def last_item(items):\n    return items[len(items)]",
    "def count_up(n):\n    i = 0\n    while i < n:\n        print(i)",
    "def greet(names):\n    for name in names:\n        return 'Hello ' + name",
    "def add_item(item, basket=[]):\n    basket.append(item)\n    return basket",
    "def maximum(xs):\n    best = 0\n    for x in xs:\n        if x > best:\n            best = x\n    return best",
    "def word_count(text):\n    return len(text.split(' '))",
    "def safe_divide(a, b):\n    try:\n        return a / b\n    except:\n        return 0",
    "function sum(arr) {\n  let s;\n  for (const x of arr) s += x;\n  return s;\n}",
)


def _coding(p: Picker) -> str:
    kind = p.num(0, 5)
    if kind == 0:
        return f"Write a {p.any(LANGUAGES)} function that {p.main(CODE_TASKS)}."
    if kind == 1:
        extra = p.any(("", " Include a short docstring.", " Add two example calls.",
                       " Keep it under 15 lines.", " Explain the time complexity."))
        return f"Write a Python function that {p.main(CODE_TASKS)}.{extra}"
    if kind == 2:
        return f"How do I {p.main(HOWTOS)} in {p.any(LANGUAGES)}? Show a short example."
    if kind == 3:
        a, b, field = p.main(CONCEPT_PAIRS)
        return f"In {field}, what is the difference between {a.strip()} and {b}? Give an example."
    if kind == 4:
        table, task = p.main(SQL_TASKS)
        return f"Given a table {table}, write a SQL query that {task}."
    ask = p.any(("What is wrong with this code, and how would you fix it?",
                 "Find the bug in this function and explain it.",
                 "Review this code and suggest a corrected version."))
    return f"{ask}\n\n{p.main(BUGGY_SNIPPETS)}"


# --------------------------------------------------------------------------
# Maths: problem templates with seeded numbers
# --------------------------------------------------------------------------
ITEMS = ("notebooks", "apples", "pencils", "tickets", "mugs", "plants", "candles", "scarves")


def m_shopping(p: Picker) -> str:
    a, b = p.num(2, 9), p.num(2, 9)
    pa, pb = p.num(2, 15), p.num(3, 25)
    ia, ib = p.some(ITEMS, 2)
    return (f"{p.any(FIRST_NAMES)} buys {a} {ia} at ${pa} each and {b} {ib} at ${pb} each. "
            f"How much change does she get from ${(a * pa + b * pb) // 10 * 10 + 20}?")


def m_speed(p: Picker) -> str:
    d, h = p.num(60, 480), p.any((1.5, 2, 2.5, 3, 4, 5))
    return f"A train travels {d} km in {h} hours. What is its average speed, and how far would it go in {p.num(2, 7)} hours at that speed?"


def m_percent(p: Picker) -> str:
    return f"What is {p.any((5, 12, 15, 20, 35, 40, 65))}% of {p.num(40, 900)}?"


def m_discount(p: Picker) -> str:
    price, off = p.num(20, 400), p.any((10, 15, 20, 25, 30, 40))
    return f"A jacket costs ${price}. It is reduced by {off}% in a sale. What is the new price?"


def m_linear(p: Picker) -> str:
    a, x, b = p.num(2, 12), p.num(-9, 15), p.num(-20, 30)
    return f"Solve for x: {a}x + {b} = {a * x + b}.".replace("+ -", "- ")


def m_rectangle(p: Picker) -> str:
    w, l = p.num(3, 30), p.num(4, 40)
    return f"A rectangular garden is {w} m wide and {l} m long. What are its area and perimeter?"


def m_average(p: Picker) -> str:
    xs = [p.num(40, 100) for _ in range(p.num(4, 7))]
    return f"A student's test scores are {', '.join(map(str, xs))}. What is the mean score?"


def m_fraction(p: Picker) -> str:
    a, b, c, d = p.num(1, 7), p.num(2, 9), p.num(1, 7), p.num(2, 9)
    op = p.any(("+", "-", "×"))
    return f"Calculate {a}/{b} {op} {c}/{d} and give the answer as a simplified fraction."


def m_interest(p: Picker) -> str:
    return (f"If I put ${p.num(5, 50) * 100} in a savings account paying {p.any((2, 3, 4, 5))}% "
            f"interest compounded yearly, how much will I have after {p.num(2, 6)} years?")


def m_recipe(p: Picker) -> str:
    s, t = p.num(2, 6), p.num(3, 12)
    return (f"A recipe for {s} people uses {p.num(100, 500)} g of flour and {p.num(1, 4)} eggs. "
            f"How much of each do I need for {t} people?")


def m_probability(p: Picker) -> str:
    r, b = p.num(2, 9), p.num(2, 9)
    return (f"A bag holds {r} red and {b} blue marbles. If I take two without replacement, "
            f"what is the probability that both are red?")


def m_work(p: Picker) -> str:
    a, b = p.num(2, 8), p.num(3, 12)
    return f"One pipe fills a tank in {a} hours and another in {b} hours. How long do they take together?"


def m_units(p: Picker) -> str:
    return p.any((
        f"Convert {p.num(2, 90)} miles to kilometres.",
        f"How many seconds are there in {p.num(2, 30)} hours?",
        f"Convert {p.num(100, 5000)} grams to kilograms and pounds.",
        f"A room is {p.num(3, 9)} m by {p.num(3, 9)} m. How many square feet is that?",
    ))


def m_sequence(p: Picker) -> str:
    a, d, n = p.num(1, 20), p.num(2, 9), p.num(10, 60)
    return f"An arithmetic sequence starts at {a} and increases by {d} each time. What is term number {n}, and the sum of the first {n} terms?"


def m_ages(p: Picker) -> str:
    son, k = p.num(3, 12), p.num(3, 5)
    years = son * (k - 2)  # chosen so that the mother is then exactly twice as old
    return (f"{p.any(FIRST_NAMES)} is {k} times as old as her son. In {years} years she will be "
            f"twice as old as him. How old are they now?")


def m_system(p: Picker) -> str:
    x, y = p.num(-5, 9), p.num(-5, 9)
    a, b, c, d = p.num(1, 5), p.num(1, 5), p.num(1, 5), p.num(-4, -1)
    return f"Solve the simultaneous equations {a}x + {b}y = {a * x + b * y} and {c}x {d:+d}y = {c * x + d * y}.".replace("+-", "-")


def m_triangle(p: Picker) -> str:
    a, b = p.num(3, 20), p.num(3, 20)
    return f"A right-angled triangle has legs of {a} cm and {b} cm. How long is the hypotenuse, to two decimal places?"


def m_circle(p: Picker) -> str:
    return f"A circular pond has a radius of {p.num(2, 25)} m. What are its circumference and area?"


def m_salary(p: Picker) -> str:
    return (f"Someone earns ${p.num(18, 45)} per hour and works {p.num(20, 45)} hours a week. "
            f"What do they earn in a year of {p.num(44, 50)} working weeks?")


def m_split_bill(p: Picker) -> str:
    return (f"A restaurant bill is ${p.num(60, 400)}. We add a {p.any((10, 12, 15, 18))}% tip "
            f"and split it equally between {p.num(3, 8)} people. How much does each person pay?")


MATH_TEMPLATES: tuple[Callable[[Picker], str], ...] = (
    m_shopping, m_speed, m_percent, m_discount, m_linear, m_rectangle, m_average,
    m_fraction, m_interest, m_recipe, m_probability, m_work, m_units, m_sequence,
    m_ages, m_system, m_triangle, m_circle, m_salary, m_split_bill,
)


def _maths(p: Picker) -> str:
    text = p.main(MATH_TEMPLATES)(p)
    return text + p.any(("", "", " Explain each step.", " Show your reasoning briefly."))


# --------------------------------------------------------------------------
# Reasoning
# --------------------------------------------------------------------------
ANIMALS = (("chickens", 2), ("cows", 4), ("spiders", 8), ("ducks", 2), ("goats", 4), ("beetles", 6))
ANALOGIES = (
    ("hot", "cold", "tall"), ("bird", "nest", "bee"), ("painter", "brush", "writer"),
    ("glove", "hand", "sock"), ("fish", "water", "bird"), ("day", "night", "summer"),
    ("author", "book", "composer"), ("key", "lock", "password"), ("seed", "tree", "egg"),
)
DECISIONS = (
    "renting versus buying a home", "taking a gap year before university",
    "working from home versus working in an office", "buying a used car versus a new one",
    "learning to code through a bootcamp versus a degree", "moving to a big city for a job",
    "switching to an electric car", "starting a small business while employed",
    "keeping cash savings versus investing", "adopting a dog versus a cat",
)


def r_order(p: Picker) -> str:
    a, b, c, d = p.some(FIRST_NAMES, 4)
    adj = p.any((("taller", "shortest"), ("older", "youngest"), ("faster", "slowest")))
    return f"{a} is {adj[0]} than {b}. {c} is {adj[0]} than {a}. {b} is {adj[0]} than {d}. Who is the {adj[1]}? Explain."


def r_days(p: Picker) -> str:
    return f"If today is {p.any(WEEKDAYS)}, what day of the week will it be in {p.num(9, 200)} days?"


def r_legs(p: Picker) -> str:
    (x, lx), (y, ly) = p.some(ANIMALS, 2)
    nx, ny = p.num(2, 20), p.num(2, 20)
    return f"A farm has {x} and {y}: {nx + ny} animals and {nx * lx + ny * ly} legs in total. How many of each are there?"


def r_next(p: Picker) -> str:
    a, d = p.num(1, 9), p.num(2, 5)
    seq = p.any(([a * d**i for i in range(5)], [a + i * i for i in range(5)], [a + d * i for i in range(5)]))
    return f"What number comes next in the sequence {', '.join(map(str, seq))}? Explain the pattern."


def r_analogy(p: Picker) -> str:
    a, b, c = p.main(ANALOGIES)
    return f"Complete the analogy and explain it: {a} is to {b} as {c} is to what?"


def r_syllogism(p: Picker) -> str:
    return p.any((
        "All the cats in my street are grey. Milo lives in my street. Can we conclude that Milo is grey?",
        "Some musicians are teachers. All teachers are patient. Does it follow that some musicians are patient?",
        "No reptiles have fur. A skink is a reptile. What can we say about skinks?",
        "If it rains, the match is cancelled. The match was not cancelled. Did it rain?",
        "Every runner in the club owns trainers. Jo owns trainers. Is Jo necessarily in the club?",
    )) + p.any(("", " Explain your answer.", " Answer yes or no, then explain."))


def r_tradeoff(p: Picker) -> str:
    return f"What are the main pros and cons of {p.any(DECISIONS)}? End with a short recommendation."


def r_schedule(p: Picker) -> str:
    a, b, c = p.some(FIRST_NAMES, 3)
    return (f"{a} can meet on Monday or Wednesday, {b} on Wednesday or Friday, and {c} on any day "
            f"except Wednesday. Is there a day all three can meet? If not, what is the best compromise?")


def r_coins(p: Picker) -> str:
    n = p.num(6, 12)
    return f"You have {n} coins and one is slightly heavier. Using a balance scale, what is the fewest number of weighings that guarantees finding it? Explain the method."


def r_clock(p: Picker) -> str:
    h, m = p.num(1, 12), p.any((0, 15, 20, 30, 40, 45))
    return f"What is the angle between the hour and minute hands of a clock at {h}:{m:02d}?"


def r_queue(p: Picker) -> str:
    n, k = p.num(10, 40), p.num(2, 9)
    return f"In a queue of {n} people, I am {k}th from the front. What is my position counting from the back?"


def r_handshakes(p: Picker) -> str:
    return f"At a meeting, each of {p.num(4, 25)} people shakes hands once with every other person. How many handshakes are there?"


def r_estimate(p: Picker) -> str:
    return p.any((
        "Roughly how many times does a human heart beat in a year? Explain your estimate.",
        "Estimate how many piano tuners might work in a city of one million people.",
        "About how many litres of water does a family of four use in a week? Reason it out.",
        "Estimate how many books a typical school library holds, and explain how you got there.",
        "How many footsteps might a person take in a lifetime? Show a rough calculation.",
    ))


def r_cause(p: Picker) -> str:
    return p.any((
        "Ice-cream sales and sunburn cases rise together. Does ice cream cause sunburn? Explain.",
        "A school with more computers has higher test scores. What else might explain this?",
        "A plant by the window grows faster than one in the corner. List possible reasons.",
        "Sales fell the month a shop changed its logo. How would you check whether the logo was the cause?",
    ))


REASONING_TEMPLATES: tuple[Callable[[Picker], str], ...] = (
    r_order, r_days, r_legs, r_next, r_analogy, r_syllogism, r_tradeoff, r_schedule,
    r_coins, r_clock, r_queue, r_handshakes, r_estimate, r_cause,
)


def _reasoning(p: Picker) -> str:
    return p.main(REASONING_TEMPLATES)(p)


# --------------------------------------------------------------------------
# Extraction: synthetic documents with questions about their fields
# --------------------------------------------------------------------------
def d_order(p: Picker) -> tuple[str, str]:
    qty, item, price = p.num(1, 5), p.any(PRODUCTS), p.num(15, 250)
    text = (f"Order confirmation #{p.num(10000, 99999)}. Thank you, {_person(p)}! Your order of "
            f"{qty} x {item} (${price} each) was placed on {_date(p)} and will be shipped to "
            f"{p.num(2, 180)} {p.any(('High Street', 'Elm Road', 'Station Lane', 'Harbour Way'))}, "
            f"{p.any(TOWNS)}. Expected delivery: {p.any(WEEKDAYS)}.")
    return text, "order number, customer name, quantity, unit price, order date and town"


def d_job(p: Picker) -> tuple[str, str]:
    role = p.any(("junior data analyst", "warehouse supervisor", "primary school teacher",
                  "front-end developer", "dental nurse", "bakery assistant"))
    text = (f"{p.any(COMPANIES)} is hiring a {role} in {p.any(TOWNS)}. The position is "
            f"{p.any(('full-time', 'part-time', 'a 12-month contract'))} and pays "
            f"${p.num(28, 85)},000 a year. Applications close on {_date(p)}; contact "
            f"{_person(p)} for details. Experience with {p.any(('Excel', 'spreadsheets', 'forklifts', 'React', 'phonics'))} is a plus.")
    return text, "company, job title, location, contract type, salary, deadline and contact person"


def d_meeting(p: Picker) -> tuple[str, str]:
    a, b, c = _person(p), _person(p), _person(p)
    text = (f"Minutes of the {p.any(('budget', 'planning', 'safety', 'product'))} meeting, {_date(p)}. "
            f"Present: {a}, {b}, {c}. {a} reported that costs rose by {p.num(2, 19)}%. "
            f"{b} will draft the new timetable by {p.any(WEEKDAYS)}. {c} agreed to contact "
            f"{p.any(COMPANIES)} about the delayed delivery. Next meeting: {_date(p)}.")
    return text, "attendees, action items with their owners, and next meeting date"


def d_event(p: Picker) -> tuple[str, str]:
    text = (f"Join us for the {p.any(TOWNS)} {p.any(('Spring Fair', 'Book Festival', 'Food Market', 'Charity Fun Run', 'Jazz Night'))} "
            f"on {_date(p)} from {p.num(9, 12)} am to {p.num(3, 9)} pm at the "
            f"{p.any(('town hall', 'riverside park', 'old market square', 'community centre'))}. "
            f"Tickets cost ${p.num(3, 25)} for adults; children under {p.num(5, 14)} go free. "
            f"Organised by {_person(p)} with support from {p.any(COMPANIES)}.")
    return text, "event name, date, times, venue, prices and organiser"


def d_review(p: Picker) -> tuple[str, str]:
    item = p.any(PRODUCTS)
    text = (f"I bought {item} in {p.any(MONTHS)}. Delivery took {p.num(2, 14)} days. "
            f"{p.any(('The build quality is excellent', 'It feels a bit flimsy', 'It works exactly as described'))}, "
            f"but {p.any(('the instructions were confusing', 'it was more expensive than expected', 'the colour differs from the photos'))}. "
            f"Overall I would give it {p.num(1, 5)} out of 5. — {_person(p)}")
    return text, "product, delivery time, one positive point, one negative point, rating and reviewer"


def d_patient(p: Picker) -> tuple[str, str]:
    text = (f"Appointment reminder: {_person(p)} is booked with Dr {p.any(SURNAMES)} at "
            f"{p.any(COMPANIES[5:6] + ('Riverside Clinic', 'Hillview Surgery'))} on {p.any(WEEKDAYS)} "
            f"{_date(p)} at {p.num(8, 17)}:{p.any(('00', '15', '30', '45'))}. Please arrive "
            f"{p.any((5, 10, 15))} minutes early and bring your {p.any(('insurance card', 'medication list', 'referral letter'))}.")
    return text, "patient name, doctor, clinic, day, date, time and what to bring"


DOC_BUILDERS: tuple[Callable[[Picker], tuple[str, str]], ...] = (
    d_order, d_job, d_meeting, d_event, d_review, d_patient,
)
EXTRACTION_ASKS = (
    "Extract the {fields} from the text below and return them as JSON.",
    "From the following text, list the {fields}.",
    "Read the text and give me a table of the {fields}.",
    "Pull out the {fields} from this message. Use one line per item.",
)


def _extraction(p: Picker) -> str:
    builder = p.main(DOC_BUILDERS)
    text, fields = builder(p)
    if p.num(0, 3) == 0:
        ask = p.any(("List every person named in this text and their role.",
                     "List every date and number mentioned in this text, with what each refers to.",
                     "Which organisations are mentioned in this text?"))
        return f"{ask}\n\n{text}"
    return p.any(EXTRACTION_ASKS).format(fields=fields) + f"\n\n{text}"


# --------------------------------------------------------------------------
# Roleplay
# --------------------------------------------------------------------------
PERSONAS = (
    "a friendly museum guide", "a patient driving instructor", "a pirate captain",
    "a medieval blacksmith", "a cheerful weather presenter", "a wise old librarian",
    "a football coach at half-time", "a detective in 1920s London", "a park ranger",
    "a barista on a busy morning", "a tour guide in ancient Rome", "a ship's cook",
    "a grumpy but kind lighthouse keeper", "a space station commander", "a gardening expert",
    "a fitness trainer", "a travel agent", "a wizard's apprentice", "a bicycle mechanic",
    "a historian of Victorian Britain", "a talking cat", "a chess grandmaster",
    "a nervous first-time game-show host", "a friendly robot shop assistant",
)
ROLE_SITUATIONS = (
    "greet a group of visitors and tell them what to expect today",
    "explain to a beginner why {topic} matters",
    "give me three tips for {goal}",
    "answer my question: what was the best day of your career?",
    "convince me to try something new this weekend",
    "describe your typical morning",
    "tell me a short story from your past",
    "calm down a customer whose order went wrong",
    "explain your job to a seven-year-old",
    "give a short motivational speech before a big day",
)
GOALS = (
    "sleeping better", "keeping houseplants alive", "saving money on groceries",
    "learning a language", "running a first 5 km", "staying focused while studying",
    "cooking for a crowd", "packing light for a trip", "keeping a bicycle in good shape",
)
SMALL_TOPICS = ("recycling", "reading every day", "drinking enough water", "learning history",
                "looking after bees", "map reading", "stretching before exercise")


def _roleplay(p: Picker) -> str:
    persona = p.main(PERSONAS)
    situation = p.any(ROLE_SITUATIONS).format(topic=p.any(SMALL_TOPICS), goal=p.any(GOALS))
    return p.any((
        f"You are {persona}. Stay in character and {situation}.",
        f"Pretend to be {persona}. In character, {situation}.",
        f"Role-play as {persona}: {situation}.",
        f"Imagine you are {persona}. {situation[0].upper() + situation[1:]}, in your own voice.",
    ))


# --------------------------------------------------------------------------
# Knowledge questions
# --------------------------------------------------------------------------
EXPLAIN = (
    "how a rainbow forms", "how vaccines train the immune system", "why the sky is blue",
    "how a bicycle's gears work", "how tides are caused by the Moon", "how a refrigerator keeps food cold",
    "how bees make honey", "how an electric motor works", "why leaves change colour in autumn",
    "how the internet routes a message", "how a compass works", "how volcanoes form",
    "how a credit card payment is processed", "how glaciers shape valleys",
    "why we have seasons", "how a hot-air balloon rises", "how soap removes grease",
    "how the printing press changed Europe", "how GPS finds your location", "how earthquakes happen",
    "how a camera lens focuses light", "why bread rises", "how the heart pumps blood",
    "how a solar panel makes electricity", "how recycling of aluminium cans works",
    "how a lock and key work", "why ice floats on water", "how clouds form",
    "how a bill becomes law in a parliament", "how antibiotics work",
)
THINGS = (
    "the Great Wall of China", "the planet Mars", "octopuses", "the Amazon rainforest",
    "the Roman Empire", "the Sahara Desert", "honeybees", "the Moon", "Antarctica",
    "the Silk Road", "the human skeleton", "Jupiter", "the Nile", "tigers", "coral reefs",
    "the Industrial Revolution", "Mount Everest", "the Pacific Ocean", "the Olympic Games",
    "the Eiffel Tower", "penguins", "the printing press", "the Maya civilisation", "volcanoes",
    "the Renaissance", "whales", "the Great Barrier Reef", "Iceland", "the periodic table",
    "the water cycle",
)
PEOPLE = (
    "Marie Curie", "Leonardo da Vinci", "Ada Lovelace", "Nelson Mandela", "Isaac Newton",
    "Florence Nightingale", "Charles Darwin", "Mahatma Gandhi", "Galileo Galilei",
    "Frida Kahlo", "Alan Turing", "Wangari Maathai", "Nikola Tesla", "Jane Austen",
    "Ibn Battuta", "Rosalind Franklin", "Wolfgang Amadeus Mozart", "Hypatia",
)
COMPARE = (
    ("weather", "climate"), ("a virus", "a bacterium"), ("a comet", "an asteroid"),
    ("a crocodile", "an alligator"), ("an epidemic", "a pandemic"), ("speed", "velocity"),
    ("a democracy", "a monarchy"), ("a lake", "a sea"), ("mitosis", "meiosis"),
    ("a rabbit", "a hare"), ("an ocean", "a sea"), ("stocks", "bonds"), ("RAM", "storage"),
    ("a frog", "a toad"), ("a meteor", "a meteorite"), ("an herbivore", "an omnivore"),
)


def _knowledge(p: Picker) -> str:
    kind = p.num(0, 4)
    if kind == 0:
        return p.any(("Explain {x}.", "Can you explain {x}?", "In simple terms, explain {x}.",
                      "Explain {x} to a twelve-year-old.")).format(x=p.main(EXPLAIN))
    if kind == 1:
        n = p.any(("three", "four", "five"))
        return p.any((f"Tell me {n} interesting facts about {{x}}.",
                      f"Give {n} key facts about {{x}}.",
                      "Write a short introduction to {x}.")).format(x=p.main(THINGS))
    if kind == 2:
        return p.any(("Who was {x}, and why are they remembered?",
                      "Summarise the life and achievements of {x} in a paragraph.",
                      "What was {x}'s most important contribution?")).format(x=p.main(PEOPLE))
    if kind == 3:
        a, b = p.main(COMPARE)
        return f"What is the difference between {a} and {b}?"
    return f"Why is {p.main(THINGS)} important? Answer in a few sentences."


# --------------------------------------------------------------------------
# Summarisation: synthetic reports built from seeded facts
# --------------------------------------------------------------------------
def s_council(p: Picker) -> str:
    town = p.any(TOWNS)
    project = p.any(("a new cycle path", "a covered market", "a skate park", "longer library hours",
                     "more buses on Sundays", "a community solar farm"))
    return (f"At Tuesday's meeting, {town} council voted {p.num(6, 11)} to {p.num(1, 5)} to approve {project}. "
            f"The plan will cost about ${p.num(2, 90) * 10},000, paid partly by a regional grant. "
            f"Councillor {_person(p)} said residents had asked for it for years, while {_person(p)} "
            f"warned that the budget for road repairs would shrink. Work is expected to start in "
            f"{p.any(MONTHS)} and finish within {p.num(3, 18)} months. A public consultation on the "
            f"details will run for {p.num(2, 8)} weeks.")


def s_study(p: Picker) -> str:
    habit = p.any(("a ten-minute walk after lunch", "reading before bed", "drinking water before meals",
                   "short breaks every hour", "gardening at weekends", "learning a musical instrument"))
    return (f"Researchers followed {p.num(120, 4000)} adults for {p.num(6, 36)} months to see whether "
            f"{habit} affected their wellbeing. Participants who kept the habit reported "
            f"{p.num(5, 30)}% fewer bad days than those who did not. The team, led by {_person(p)}, "
            f"cautioned that the study relied on self-reported diaries and could not prove cause and effect. "
            f"They plan a larger trial next year with more varied participants.")


def s_launch(p: Picker) -> str:
    company, product = p.any(COMPANIES), p.any(PRODUCTS)
    return (f"{company} launched {product} on {_date(p)}. The company says it took {p.num(1, 4)} years to "
            f"develop and will sell for ${p.num(19, 350)}. Early reviewers praised its design but "
            f"criticised the {p.any(('battery life', 'price', 'weight', 'short warranty'))}. Chief executive "
            f"{_person(p)} expects to sell {p.num(5, 90)},000 units in the first year and plans to open "
            f"{p.num(2, 12)} new stores.")


def s_match(p: Picker) -> str:
    a, b = p.some(TOWNS, 2)
    ga, gb = p.num(0, 5), p.num(0, 5)
    return (f"{a} Rovers and {b} United drew a crowd of {p.num(800, 9000)} on Saturday. {a} scored first "
            f"through {_person(p)} after {p.num(3, 40)} minutes, but {b} came back strongly after the break. "
            f"The final score was {ga}-{gb}. The {a} manager praised the young defenders, while the "
            f"{b} captain said the team must improve its finishing before next week's cup tie.")


def s_weather(p: Picker) -> str:
    return (f"Forecasters expect a {p.any(('wet', 'windy', 'unusually warm', 'cold and bright'))} week across the region. "
            f"Temperatures will reach {p.num(2, 31)} °C on {p.any(WEEKDAYS)} before falling sharply. "
            f"Up to {p.num(10, 60)} mm of rain could fall in the hills, and travellers are advised to check "
            f"ferry times. Farmers in {p.any(TOWNS)} have been told to {p.any(('protect young crops', 'move livestock to higher ground', 'delay harvesting'))}. "
            f"Calmer conditions should return by the weekend.")


def s_history(p: Picker) -> str:
    return (f"The {p.any(TOWNS)} canal opened in {p.num(1760, 1890)} to carry coal and grain to the coast. "
            f"For decades it was the town's main link to the outside world, employing hundreds of boatmen. "
            f"When the railway arrived in {p.num(1840, 1910)}, traffic declined and the canal was closed. "
            f"Volunteers began restoring it in the {p.any(('1960s', '1970s', '1980s', '1990s'))}, and today "
            f"it attracts about {p.num(20, 400)},000 walkers and boaters a year.")


SUMMARY_SOURCES: tuple[Callable[[Picker], str], ...] = (
    s_council, s_study, s_launch, s_match, s_weather, s_history,
)
SUMMARY_ASKS = (
    "Summarise the following text in {n} sentences.",
    "Give a one-sentence summary of this text.",
    "Summarise the key points of this article as bullet points.",
    "Write a short headline and a two-sentence summary for this report.",
    "Summarise this for a busy reader in under {w} words.",
    "Explain the main point of this passage to a ten-year-old.",
)


def _summarisation(p: Picker) -> str:
    text = p.main(SUMMARY_SOURCES)(p)
    ask = p.any(SUMMARY_ASKS).format(n=p.any(("two", "three")), w=p.any((30, 40, 50)))
    return f"{ask}\n\n{text}"


CATEGORIES: dict[str, Callable[[Picker], str]] = {
    "writing": _writing,
    "coding": _coding,
    "maths": _maths,
    "reasoning": _reasoning,
    "extraction": _extraction,
    "roleplay": _roleplay,
    "knowledge": _knowledge,
    "summarisation": _summarisation,
}


# --------------------------------------------------------------------------
# Generation, checks, files
# --------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Case- and whitespace-insensitive form used for distinctness checks."""
    return re.sub(r"\s+", " ", text.strip().lower())


def _category_prompts(category: str, split: str, count: int, seed: int,
                      exclude: frozenset[str] = frozenset()) -> list[str]:
    """`count` distinct prompts of one category, deterministic in (category, split, seed),
    none of them in `exclude` (normalised texts).

    split "wide" is a train split drawn with `WidePicker` (main pools plus wide topics).
    """
    rng = random.Random(f"{seed}-{category}-{split}")
    picker = WidePicker(rng) if split == "wide" else Picker(rng, split)
    make = CATEGORIES[category]
    seen: dict[str, str] = {}
    for _ in range(count * 200):
        if len(seen) == count:
            break
        text = make(picker)
        key = normalise(text)
        if key not in exclude:
            seen.setdefault(key, text)
    if len(seen) < count:
        raise NFoxHeadError(
            f"only {len(seen)} distinct {split} prompts for {category!r}, {count} asked",
            "ask for fewer prompts or add templates/topics",
        )
    return list(seen.values())


def generate_split(split: str, total: int, seed: int = 0, exclude: frozenset[str] = frozenset()) -> list[Prompt]:
    """`total` prompts spread evenly over CATEGORIES, interleaved category by category,
    none of them in `exclude` (normalised texts)."""
    cats = list(CATEGORIES)
    per_cat = [total // len(cats) + (i < total % len(cats)) for i in range(len(cats))]
    lists = {c: _category_prompts(c, split, n, seed, exclude) for c, n in zip(cats, per_cat)}
    out: list[Prompt] = []
    for i in range(max(per_cat)):
        for c in cats:
            if i < len(lists[c]):
                out.append(Prompt(f"{split}-{c}-{i:04d}", c, lists[c][i]))
    return out


def check_prompt_sets(train: Sequence[Prompt], bench: Sequence[Prompt]) -> None:
    """Raise NFoxHeadError unless ids and texts are unique, sets disjoint, no benchmark text."""
    for name, items in (("train", train), ("bench", bench)):
        if len({p.id for p in items}) != len(items):
            raise NFoxHeadError(f"duplicate ids in {name}", "fix the generator")
        if len({normalise(p.prompt) for p in items}) != len(items):
            raise NFoxHeadError(f"duplicate prompts in {name}", "fix the generator")
    overlap = {normalise(p.prompt) for p in train} & {normalise(p.prompt) for p in bench}
    if overlap:
        raise NFoxHeadError(
            f"{len(overlap)} prompt(s) in both train and bench, e.g. {sorted(overlap)[0][:60]!r}",
            "fix the train/bench split of the main pools",
        )
    for p in (*train, *bench):
        hit = next((f for f in FORBIDDEN_PHRASES if f in normalise(p.prompt)), None)
        if hit:
            raise NFoxHeadError(f"{p.id} contains benchmark text {hit!r}", "change the template")


def check_wide_set(wide: Sequence[Prompt], train: Sequence[Prompt], bench: Sequence[Prompt]) -> None:
    """Raise NFoxHeadError unless the wide set is unique, new, and disjoint from the bench."""
    check_prompt_sets(wide, bench)
    overlap = {normalise(p.prompt) for p in wide} & {normalise(p.prompt) for p in train}
    if overlap:
        raise NFoxHeadError(f"{len(overlap)} wide prompt(s) repeat train.jsonl, e.g. {sorted(overlap)[0][:60]!r}",
                            "use another --seed or fewer --wide prompts")


def write_jsonl(path: Path, prompts: Sequence[Prompt]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in prompts:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")


def build(out_dir: Path, train: int = 2400, bench: int = 80, seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """Generate, check and write `train.jsonl` and `bench.jsonl` into `out_dir`."""
    train_set, bench_set = generate_split("train", train, seed), generate_split("bench", bench, seed)
    check_prompt_sets(train_set, bench_set)
    write_jsonl(out_dir / "train.jsonl", train_set)
    write_jsonl(out_dir / "bench.jsonl", bench_set)
    return train_set, bench_set


def build_wide(out_dir: Path, wide: int, train: int = 2400, bench: int = 80, seed: int = 0) -> list[Prompt]:
    """Generate, check and write `train-wide.jsonl`: more train prompts over the wide topics."""
    train_set, bench_set = generate_split("train", train, seed), generate_split("bench", bench, seed)
    taken = frozenset(normalise(p.prompt) for p in (*train_set, *bench_set))
    wide_set = generate_split("wide", wide, seed, exclude=taken)
    check_wide_set(wide_set, train_set, bench_set)
    write_jsonl(out_dir / "train-wide.jsonl", wide_set)
    return wide_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vllm_nfoxhead.training.prompts",
        description="Write the generated train/bench prompt sets (deterministic).",
    )
    parser.add_argument("--out", default="data/prompts", help="output directory")
    parser.add_argument("--train", type=int, default=2400, help="number of train prompts")
    parser.add_argument("--bench", type=int, default=80, help="number of bench prompts")
    parser.add_argument("--wide", type=int, default=0,
                        help="also write train-wide.jsonl with this many train prompts that draw their "
                             "subjects from the train-only wide topic pools (0 = none)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the shipped files use 0)")
    args = parser.parse_args(argv)
    try:
        train, bench = build(Path(args.out), args.train, args.bench, args.seed)
        wide = build_wide(Path(args.out), args.wide, args.train, args.bench, args.seed) if args.wide else []
    except NFoxHeadError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {len(train)} train, {len(bench)} bench and {len(wide)} wide prompts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
