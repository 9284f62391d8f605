"""English sentences for the synthetic corpus, from a small grammar over a built-in lexicon.

`generate_sentences(n, seed)` returns `n` distinct sentences of 4 to 20 words: statements,
questions and exclamations, with commas, subordinate clauses and sometimes numbers. The
lexicon is chosen so that a few hundred sentences use every phoneme of English, the rare ones
included (the /ʒ/ of "measure", the /ɔɪ/ of "noise", the /θ/ of "thirty"). The grammar allows
millions of distinct sentences; the output is a pure function of (n, seed), and a shorter list
is a prefix of a longer one with the same seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

MIN_WORDS, MAX_WORDS = 4, 20
T = TypeVar("T")


@dataclass(frozen=True)
class Verb:
    base: str
    past: str
    third: str  # third person singular present
    ing: str
    participle: str


def _verbs(table: str) -> tuple[Verb, ...]:
    """One verb per line: base past third-person -ing participle (words joined by "_" stay together)."""
    return tuple(Verb(*(word.replace("_", " ") for word in line.split())) for line in table.strip().splitlines())


def _words(text: str) -> tuple[str, ...]:
    """Comma-separated phrases."""
    return tuple(word.strip() for word in text.split(",") if word.strip())


# Who does things. Subjects carry their grammatical person: "3" third singular, "p" plural, "1" first singular.
NAMES = _words(
    "Alice, Oliver, Zoe, Joshua, Theo, Ruth, Charlotte, Hugo, Vivian, Ingrid, George, Isabel, Martin, Nora,"
    "Victor, Yusuf, Grace, Owen, Sophie, Walter, Jasmine, Leo, Hannah, Marcus, Lucy, Felix, Daisy, Arthur,"
    "Eleanor, Samuel, Chloe, Benjamin, Julia, Thomas, Maya, Edward, Rosa, Peter, Amelia, Jack, Irene, Patrick,"
    "Helen, Roger, Dominic, Olivia, Frank, Lily, Henry, Naomi, Simon, Emma, Vincent, Clara, Quentin, Ursula,"
    "Xavier, Beatrice, Raymond, Judith, Gabriel, Monica, Joy, Boris, Yvonne, Zachary, Shirley, Howard"
)
PEOPLE = _words(
    "teacher, doctor, farmer, baker, pilot, nurse, engineer, neighbor, student, journalist, chef, gardener,"
    "plumber, singer, painter, soldier, sailor, judge, lawyer, librarian, mechanic, musician, waiter, driver,"
    "fisherman, carpenter, scientist, captain, manager, tourist, shepherd, jeweler, photographer, boy, girl"
)
GROUPS = _words(
    "children, students, neighbors, workers, tourists, players, guests, soldiers, farmers, nurses, twins,"
    "sailors, engineers, visitors, musicians, scouts, cousins, villagers, passengers, volunteers"
)
RELATIVES = _words(
    "brother, sister, cousin, grandmother, grandfather, uncle, aunt, friend, father, mother, husband, wife,"
    "daughter, son, nephew, niece, roommate, boss, colleague, classmate"
)
OWNERS = ("my", "your", "his", "her", "our", "their")
PERSON_ADJECTIVES = _words(
    "older, younger, clever, quiet, cheerful, patient, curious, generous, elderly, tall, cautious, lazy"
)

# What they act on: singular phrases take an article, plural and mass nouns may go bare.
FOODS = _words(
    "sandwich, orange, apple, pear, pie, cake, peach, melon, pizza, onion, cucumber, lemon, pumpkin,"
    "biscuit, pineapple, avocado, croissant, doughnut, potato, omelette"
)
FOOD_MASS = _words(
    "bread, cheese, soup, rice, honey, butter, salad, sugar, chocolate, yogurt, juice, coffee, tea, milk,"
    "porridge, cereal, jam, garlic, spinach, fudge"
)
FOOD_PLURALS = _words(
    "apples, cookies, eggs, grapes, potatoes, noodles, strawberries, cherries, carrots, mushrooms, peanuts,"
    "tomatoes, sausages, olives, beans, pancakes, muffins, raisins, dumplings, oysters"
)
FOOD_ADJECTIVES = _words(
    "fresh, warm, delicious, sweet, sour, spicy, salty, crunchy, juicy, homemade, frozen, tiny, enormous,"
    "burnt, ripe, smoky, creamy, bitter, cheap, leftover"
)
THINGS = _words(
    "book, umbrella, bicycle, jacket, lamp, letter, map, camera, guitar, chair, clock, kite, blanket, suitcase,"
    "television, necklace, hammer, ladder, basket, radio, puzzle, violin, pillow, notebook, telescope, helmet,"
    "wallet, mirror, candle, boat, toy, shovel, vase, feather, scarf, ring, envelope, treasure chest, garage door,"
    "microphone, engine, wheelbarrow, trumpet, compass, bucket, thermometer, sofa, sweater, anchor, oven"
)
THING_PLURALS = _words(
    "keys, coins, boots, gloves, glasses, shoes, tools, stamps, batteries, tickets, shells, photographs,"
    "paintings, pencils, buttons, cushions, marbles, jewels, bottles, toys"
)
THING_ADJECTIVES = _words(
    "small, large, old, new, bright, dark, heavy, beautiful, strange, broken, shiny, wooden, yellow, purple,"
    "orange, green, blue, red, brown, round, smooth, rough, tiny, huge, quiet, noisy, warm, wet, dry,"
    "expensive, cheap, clean, dirty, fragile, lovely, ugly, ancient, modern, soft, thick, golden, silver,"
    "enormous, delicate, beige, unusual, valuable, ordinary, plastic, leather"
)
READABLES = _words(
    "letter, poem, story, newspaper, message, report, book, recipe, email, postcard, novel, song, contract,"
    "diary, speech, menu, article, invitation, joke, essay"
)
PLACES = _words(
    "market, station, library, beach, garden, kitchen, museum, village, harbor, forest, river, bakery,"
    "hospital, school, office, park, church, bridge, island, farm, airport, castle, cinema, garage, zoo, lake,"
    "valley, hotel, theater, stadium, desert, jungle, old mill, bus stop, post office, swimming pool,"
    "playground, supermarket, lighthouse, cottage, village hall, train station, city center, treasury"
)
PLACE_ADJECTIVES = _words(
    "peaceful, crowded, quiet, busy, lonely, beautiful, empty, noisy, gloomy, cozy, enormous, ancient,"
    "charming, famous, deserted, tidy, shabby, splendid"
)
WEATHER_ADJECTIVES = _words("sunny, cloudy, windy, foggy, freezing, humid, chilly, mild, stormy, damp, warm, wet")
FEELINGS = _words(
    "tired, happy, nervous, excited, hungry, thirsty, angry, curious, proud, worried, surprised, calm,"
    "cheerful, sleepy, confused, jealous, brave, anxious, relieved, thrilled, bored, grateful, annoyed, amused"
)
ADVERBS = _words(
    "quickly, slowly, carefully, quietly, happily, suddenly, loudly, gently, patiently, eagerly, nervously,"
    "proudly, politely, secretly, calmly, immediately, gracefully, cheerfully, clumsily, reluctantly, joyfully,"
    "anxiously, thoroughly, casually, usually"
)
PAST_TIMES = _words(
    "yesterday, this morning, last night, on Monday, on Tuesday, on Wednesday, on Thursday, on Friday,"
    "on Saturday, on Sunday, in the evening, at noon, at midnight, after lunch, before breakfast, last summer,"
    "in the winter, two days ago, early this morning, later that afternoon, during the storm, last month,"
    "after the concert, at dawn, a week ago, just before sunset, in the autumn, on her birthday"
)
FUTURE_TIMES = _words(
    "tomorrow, next week, on Friday, tonight, next summer, in an hour, soon, later today, after dinner,"
    "next month, on Sunday morning, this weekend, before the holidays, the day after tomorrow, at sunrise"
)
WEATHER = _words(
    "rains, snows, gets too cold, stays sunny, turns windy, gets foggy, stops raining, clears up, gets hotter"
)

FOOD_VERBS = _verbs("""
eat ate eats eating eaten
cook cooked cooks cooking cooked
buy bought buys buying bought
bake baked bakes baking baked
share shared shares sharing shared
taste tasted tastes tasting tasted
order ordered orders ordering ordered
sell sold sells selling sold
bring brought brings bringing brought
prepare prepared prepares preparing prepared
slice sliced slices slicing sliced
wash washed washes washing washed
pack packed packs packing packed
forget forgot forgets forgetting forgotten
choose chose chooses choosing chosen
measure measured measures measuring measured
""")
THING_VERBS = _verbs("""
find found finds finding found
lose lost loses losing lost
fix fixed fixes fixing fixed
carry carried carries carrying carried
buy bought buys buying bought
paint painted paints painting painted
borrow borrowed borrows borrowing borrowed
hide hid hides hiding hidden
clean cleaned cleans cleaning cleaned
wrap wrapped wraps wrapping wrapped
drop dropped drops dropping dropped
repair repaired repairs repairing repaired
move moved moves moving moved
hold held holds holding held
open opened opens opening opened
polish polished polishes polishing polished
choose chose chooses choosing chosen
break broke breaks breaking broken
throw threw throws throwing thrown
push pushed pushes pushing pushed
pull pulled pulls pulling pulled
check checked checks checking checked
keep kept keeps keeping kept
examine examined examines examining examined
measure measured measures measuring measured
return returned returns returning returned
sell sold sells selling sold
pick_up picked_up picks_up picking_up picked_up
""")
READ_VERBS = _verbs("""
read read reads reading read
write wrote writes writing written
sign signed signs signing signed
send sent sends sending sent
print printed prints printing printed
translate translated translates translating translated
finish finished finishes finishing finished
share shared shares sharing shared
forget forgot forgets forgetting forgotten
receive received receives receiving received
study studied studies studying studied
recite recited recites reciting recited
""")
PERSON_VERBS = _verbs("""
meet met meets meeting met
visit visited visits visiting visited
call called calls calling called
help helped helps helping helped
thank thanked thanks thanking thanked
invite invited invites inviting invited
follow followed follows following followed
warn warned warns warning warned
hug hugged hugs hugging hugged
teach taught teaches teaching taught
chase chased chases chasing chased
greet greeted greets greeting greeted
recognize recognized recognizes recognizing recognized
interview interviewed interviews interviewing interviewed
miss missed misses missing missed
trust trusted trusts trusting trusted
surprise surprised surprises surprising surprised
ignore ignored ignores ignoring ignored
encourage encouraged encourages encouraging encouraged
join joined joins joining joined
annoy annoyed annoys annoying annoyed
""")
PLACE_VERBS = _verbs("""
visit visited visits visiting visited
leave left leaves leaving left
reach reached reaches reaching reached
explore explored explores exploring explored
clean cleaned cleans cleaning cleaned
photograph photographed photographs photographing photographed
search searched searches searching searched
approach approached approaches approaching approached
paint painted paints painting painted
sketch sketched sketches sketching sketched
""")
INTRANSITIVE = _verbs("""
laugh laughed laughs laughing laughed
smile smiled smiles smiling smiled
wait waited waits waiting waited
sleep slept sleeps sleeping slept
dance danced dances dancing danced
sing sang sings singing sung
shout shouted shouts shouting shouted
whisper whispered whispers whispering whispered
arrive arrived arrives arriving arrived
swim swam swims swimming swum
jump jumped jumps jumping jumped
cry cried cries crying cried
run_away ran_away runs_away running_away run_away
sit_down sat_down sits_down sitting_down sat_down
wake_up woke_up wakes_up waking_up woken_up
listen listened listens listening listened
work worked works working worked
rest rested rests resting rested
hesitate hesitated hesitates hesitating hesitated
apologize apologized apologizes apologizing apologized
disappear disappeared disappears disappearing disappeared
return returned returns returning returned
join_in joined_in joins_in joining_in joined_in
""")

NUMBER_WORDS = _words(
    "two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen, fifteen, twenty, thirty,"
    "forty, fifty, a hundred, a thousand, a dozen"
)
# An initial vowel letter that is not said as a vowel, or a consonant letter that is.
_CONSONANT_SOUND = ("one", "use", "usu", "uni", "euro")
_VOWEL_SOUND = ("hour", "honest", "heir")


def _article(phrase: str) -> str:
    lower = phrase.lower()
    vowel = lower[0] in "aeiou" and not lower.startswith(_CONSONANT_SOUND)
    return ("an " if vowel or lower.startswith(_VOWEL_SOUND) else "a ") + phrase


class _Grammar:
    """The phrase builders; each template picks from them with one shared random generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, options: Sequence[T]) -> T:
        return self.rng.choice(options)

    def maybe(self, probability: float) -> bool:
        return self.rng.random() < probability

    def number(self) -> str:
        """Small counts: as digits (2-99) or as words."""
        if self.maybe(0.5):
            return str(self.rng.randint(2, 99))
        return self.pick(NUMBER_WORDS)

    # Noun phrases; a subject comes with its grammatical person.
    def subject(self) -> tuple[str, str]:
        kind = self.rng.random()
        if kind < 0.35:
            return self.pick(NAMES), "3"
        if kind < 0.55:
            adjective = self.pick(PERSON_ADJECTIVES) + " " if self.maybe(0.4) else ""
            return f"{self.pick(OWNERS)} {adjective}{self.pick(RELATIVES)}", "3"
        if kind < 0.75:
            return f"the {self.pick(PEOPLE)}", "3"
        if kind < 0.87:
            return f"the {self.pick(GROUPS)}", "p"
        return self.pick([("I", "1"), ("we", "p"), ("they", "p"), ("you", "p"), ("she", "3"), ("he", "3")])

    def person_object(self) -> str:
        kind = self.rng.random()
        if kind < 0.4:
            return self.pick(NAMES)
        if kind < 0.7:
            return f"{self.pick(OWNERS)} {self.pick(RELATIVES)}"
        if kind < 0.85:
            return f"the {self.pick(PEOPLE)}"
        return self.pick(("us", "them", "her", "him", "me"))

    def food(self) -> str:
        kind = self.rng.random()
        adjective = self.pick(FOOD_ADJECTIVES) + " " if self.maybe(0.5) else ""
        if kind < 0.35:
            return _article(adjective + self.pick(FOODS)) if self.maybe(0.6) else f"the {adjective}{self.pick(FOODS)}"
        if kind < 0.65:
            return self.pick(("some ", "the ", "")) + adjective + self.pick(FOOD_MASS)
        return self.pick(("some ", "the ", "", f"{self.number()} ")) + adjective + self.pick(FOOD_PLURALS)

    def thing(self) -> str:
        adjective = self.pick(THING_ADJECTIVES) + " " if self.maybe(0.55) else ""
        if self.maybe(0.25):
            return self.pick(("the ", "some ", f"{self.number()} ", "")) + adjective + self.pick(THING_PLURALS)
        noun = adjective + self.pick(THINGS)
        return self.pick((_article(noun), "the " + noun, f"{self.pick(OWNERS)} {noun}"))

    def readable(self) -> str:
        noun = self.pick(READABLES)
        return self.pick((_article(noun), f"the {noun}", f"{self.pick(OWNERS)} {noun}"))

    def place(self) -> str:
        adjective = self.pick(PLACE_ADJECTIVES) + " " if self.maybe(0.25) else ""
        return f"the {adjective}{self.pick(PLACES)}"

    def object_phrase(self) -> tuple[tuple[Verb, ...], str]:
        """A verb class and a fitting object: people are met, food is eaten, places are visited."""
        kind = self.rng.random()
        if kind < 0.25:
            return FOOD_VERBS, self.food()
        if kind < 0.55:
            return THING_VERBS, self.thing()
        if kind < 0.7:
            return READ_VERBS, self.readable()
        if kind < 0.88:
            return PERSON_VERBS, self.person_object()
        return PLACE_VERBS, self.place()

    def location(self) -> str:
        return f"{self.pick(('in', 'at', 'near', 'behind', 'outside', 'beside'))} {self.place()}"

    def past_clause(self) -> str:
        subject, _ = self.subject()
        if self.maybe(0.2):
            verb = self.pick(INTRANSITIVE)
            tail = self.pick(("", f" {self.pick(ADVERBS)}", f" {self.location()}"))
            return f"{subject} {verb.past}{tail}"
        verbs, obj = self.object_phrase()
        tail = self.pick(("", "", f" {self.location()}", f" {self.pick(ADVERBS)}"))
        return f"{subject} {self.pick(verbs).past} {obj}{tail}"

    def be(self, person: str, past: bool) -> str:
        if past:
            return "were" if person == "p" else "was"
        return {"1": "am", "3": "is"}.get(person, "are")

    def present(self, verb: Verb, person: str) -> str:
        return verb.third if person == "3" else verb.base


def _statement_past(g: _Grammar) -> str:
    clause = g.past_clause()
    if g.maybe(0.4):
        return f"{g.pick(PAST_TIMES)}, {clause}."
    if g.maybe(0.3):
        return f"{clause} {g.pick(PAST_TIMES)}."
    return f"{clause}."


def _statement_future(g: _Grammar) -> str:
    subject_and_person = g.subject()
    verbs, obj = g.object_phrase()
    subject, person = subject_and_person
    modal = g.pick(("will", "might", "should", "could", f"{g.be(person, False)} going to"))
    return f"{subject} {modal} {g.pick(verbs).base} {obj} {g.pick(FUTURE_TIMES)}."


def _statement_progressive(g: _Grammar) -> str:
    subject, person = g.subject()
    verbs, obj = g.object_phrase()
    past = g.maybe(0.5)
    where = f" {g.location()}" if g.maybe(0.5) else ""
    return f"{subject} {g.be(person, past)} {g.pick(verbs).ing} {obj}{where}."


def _statement_habit(g: _Grammar) -> str:
    subject, person = g.subject()
    verbs, obj = g.object_phrase()
    clause = f"{subject} {g.present(g.pick(verbs), person)} {obj}"
    if g.maybe(0.4):
        return f"{g.pick(('usually', 'sometimes', 'often', 'as a rule'))}, {clause}."
    when = g.pick(("every morning", "on weekends", "twice a week", "every summer", "after school", "once a month"))
    return f"{clause} {when}."


def _statement_description(g: _Grammar) -> str:
    kind = g.rng.random()
    if kind < 0.35:
        thing, where = f"{g.pick(THING_ADJECTIVES)} {g.pick(THINGS)}", g.location()
        return f"the {thing} {where} was {g.pick(THING_ADJECTIVES)} and {g.pick(THING_ADJECTIVES)}."
    if kind < 0.6:
        return f"the weather {g.location()} was {g.pick(WEATHER_ADJECTIVES)} {g.pick(PAST_TIMES)}."
    if kind < 0.8:
        subject, person = g.subject()
        intensifier = g.pick(("very", "rather", "a little", "so", "quite"))
        return f"{subject} {g.be(person, g.maybe(0.6))} {intensifier} {g.pick(FEELINGS)} after the trip to {g.place()}."
    things = g.pick(THING_PLURALS + FOOD_PLURALS + GROUPS)
    return f"there {g.pick(('were', 'are'))} {g.number()} {things} {g.location()}."


def _statement_compound(g: _Grammar) -> str:
    first = g.past_clause()
    kind = g.rng.random()
    if kind < 0.3:
        return f"{first}, but {g.past_clause()}."
    if kind < 0.55:
        subject, person = g.subject()
        return f"{first} because {subject} {g.be(person, True)} {g.pick(FEELINGS)}."
    if kind < 0.8:
        subject, person = g.subject()
        verb = g.pick(INTRANSITIVE)
        return f"when {subject} {verb.past}, {first}."
    subject, person = g.subject()
    return f"although {subject} {g.be(person, True)} {g.pick(FEELINGS)}, {first}."


def _statement_sequence(g: _Grammar) -> str:
    kind = g.rng.random()
    if kind < 0.4:
        return f"{g.pick(PAST_TIMES)}, {g.past_clause()}, and then {g.past_clause()}."
    subject, person = g.subject()
    verbs, obj = g.object_phrase()
    return f"while {subject} {g.be(person, True)} {g.pick(verbs).ing} {obj}, {g.past_clause()}."


def _statement_condition(g: _Grammar) -> str:
    subject, _ = g.subject()
    verbs, obj = g.object_phrase()
    return f"if it {g.pick(WEATHER)} {g.pick(FUTURE_TIMES)}, {subject} will {g.pick(verbs).base} {obj} instead."


def _statement_reported(g: _Grammar) -> str:
    speaker, _ = g.subject()
    verb = g.pick(("said", "explained", "told us", "insisted", "complained", "admitted", "noticed"))
    noun = g.pick(THINGS + PLACES + READABLES)
    return f"{speaker} {verb} that the {noun} was {g.pick(THING_ADJECTIVES + PLACE_ADJECTIVES)}."


def _statement_number(g: _Grammar) -> str:
    kind = g.rng.random()
    if kind < 0.3:
        subject, _ = g.subject()
        verb = g.pick(("counted", "collected", "found", "bought", "painted", "photographed", "sold"))
        return f"{subject} {verb} {g.rng.randint(2, 99)} {g.pick(THING_PLURALS + FOOD_PLURALS)} {g.location()}."
    if kind < 0.5:
        event = g.pick(("train", "bus", "ferry", "flight", "concert", "meeting"))
        return f"the {event} {g.pick(('leaves', 'starts', 'arrives'))} at {g.rng.randint(1, 12)} o'clock."
    if kind < 0.7:
        name, year = g.pick(NAMES), g.rng.randint(1921, 1999)
        relation = g.pick(("near", "far from", "north of", "south of"))
        return f"{name} was born in {year} in a village {relation} the {g.pick(PLACES)}."
    if kind < 0.85:
        verdict = g.pick(("cheap", "expensive", "a bargain", "too much"))
        return f"the {g.pick(THINGS)} cost {g.rng.randint(2, 99)} dollars, which was {verdict}."
    about = g.pick(("almost", "about", "nearly", "exactly"))
    return f"we waited {about} {g.rng.randint(2, 59)} minutes for {g.person_object()}."


def _question(g: _Grammar) -> str:
    kind = g.rng.random()
    subject, person = g.subject()
    verbs, obj = g.object_phrase()
    verb = g.pick(verbs)
    if kind < 0.2:
        return f"did {subject} {verb.base} {obj}{g.pick(('', ' ' + g.location(), ' ' + g.pick(PAST_TIMES)))}?"
    if kind < 0.35:
        return f"{g.pick(('why', 'where', 'when', 'how'))} did {subject} {verb.base} {obj}?"
    if kind < 0.5:
        return f"have you ever {verb.participle} {obj}?"
    if kind < 0.6:
        return f"{g.be(person, False)} {subject} still {verb.ing} {obj}?"
    if kind < 0.7:
        return f"{g.pick(('can', 'could', 'would', 'will'))} you {verb.base} {obj} {g.pick(FUTURE_TIMES)}?"
    if kind < 0.78:
        things, verb = g.pick(THING_PLURALS + FOOD_PLURALS), g.pick(("buy", "find", "count", "bring"))
        return f"how many {things} did {subject} {verb}?"
    if kind < 0.86:
        return f"do you know where {g.place()} is?"
    if kind < 0.93:
        return f"who {verb.past} {obj}?"
    return f"would you like some {g.pick(FOOD_MASS)} with your {g.pick(FOODS)}?"


def _exclamation(g: _Grammar) -> str:
    kind = g.rng.random()
    if kind < 0.2:
        return f"what {_article(g.pick(THING_ADJECTIVES) + ' ' + g.pick(THINGS))} that is!"
    if kind < 0.35:
        return f"how {g.pick(PLACE_ADJECTIVES + WEATHER_ADJECTIVES)} the {g.pick(PLACES)} looks today!"
    if kind < 0.5:
        trouble = g.pick(("falling", "slipping", "rolling away", "on fire", "breaking"))
        return f"watch out, the {g.pick(THINGS)} is {trouble}!"
    if kind < 0.65:
        verdict = g.pick(("amazing", "wonderful", "terrible", "hilarious", "unbelievable", "awesome"))
        return f"{g.pick(NAMES)}, that was {verdict}!"
    if kind < 0.8:
        return f"oh no, I forgot {g.thing()} {g.location()}!"
    if kind < 0.9:
        return f"look at all those {g.pick(THING_ADJECTIVES)} {g.pick(THING_PLURALS)}!"
    return f"{g.pick(('hurry up', 'come quickly', 'be careful', 'stop right there', 'wake up'))}, {g.pick(NAMES)}!"


_TEMPLATES: tuple[tuple[Callable[[_Grammar], str], float], ...] = (
    (_statement_past, 0.17),
    (_statement_future, 0.07),
    (_statement_progressive, 0.07),
    (_statement_habit, 0.05),
    (_statement_description, 0.07),
    (_statement_compound, 0.13),
    (_statement_sequence, 0.1),
    (_statement_condition, 0.04),
    (_statement_reported, 0.05),
    (_statement_number, 0.08),
    (_question, 0.13),
    (_exclamation, 0.06),
)


def _sentence(g: _Grammar) -> str:
    template = g.rng.choices([t for t, _ in _TEMPLATES], weights=[w for _, w in _TEMPLATES])[0]
    text = template(g)
    return text[0].upper() + text[1:]


def generate_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct English sentences of 4-20 words, the same for the same seed (a prefix for a smaller n)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    grammar = _Grammar(random.Random(seed))
    sentences: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(sentences) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"the grammar ran out of new sentences after {len(sentences)}; ask for fewer than {n}")
        sentence = _sentence(grammar)
        if sentence in seen or not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
            continue
        seen.add(sentence)
        sentences.append(sentence)
    return sentences
