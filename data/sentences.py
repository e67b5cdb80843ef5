"""Deterministic English sentences from a small grammar, for the synthetic speech corpus.

Why a grammar: the corpus must be built on the spot without downloads or copyrighted
text, and a tiny model must be able to learn ASR on it, so the vocabulary is closed and
moderate (about a thousand words) while word order and sentence length vary widely:
short statements and imperatives, questions, and long compound sentences with
subordinate and reported clauses (roughly 4 to 30 words). Numbers are spelled out, so
transcripts contain no digits; the raw text keeps capitals, commas, full stops,
question marks and a few contractions, which `gpa_jax.text.normalize_transcript` removes.

All randomness flows from `random.Random(seed)` (Mersenne Twister with integer seeding,
stable across processes and Python 3 versions); nothing depends on `hash()` or set order.
`generate_sentences(n, seed)` is a prefix of `generate_sentences(m, seed)` for n <= m.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence

# ---------------------------------------------------------------------------------------
# Word lists. Nouns are "singular" or "singular/plural" when the plural is irregular;
# verbs are "base:past" (multi-word verbs use "_" for spaces, e.g. "wait_for:waited_for").
# ---------------------------------------------------------------------------------------

_NAMES = """anna ben clara daniel emma frank grace henry iris jack kate leo maria nora oliver
paul rosa sam tom victor alice carlos diana edward fiona george helen isaac julia kevin laura
martin nina oscar peter ruth simon tina walter""".split()

_PEOPLE = """teacher farmer doctor baker driver student painter sailor nurse writer singer pilot
gardener fisherman/fishermen neighbor child/children woman/women man/men boy girl king queen
soldier cook waiter guard lawyer artist engineer mechanic musician captain shepherd hunter
merchant stranger visitor scientist clerk carpenter librarian postman/postmen tailor
miller""".split()

_ANIMALS = """dog cat horse cow sheep/sheep goat pig duck goose/geese rabbit mouse/mice bird fox
wolf/wolves bear deer/deer owl frog donkey lion tiger monkey squirrel hen lamb puppy kitten
crow parrot turtle""".split()

_THINGS = """book letter box basket bottle cup plate chair table lamp key coin ring hat coat
shoe bag bucket rope ladder map picture candle blanket pencil knife/knives spoon bell clock
mirror umbrella kite ball toy bicycle boat cart wagon newspaper parcel jar pot kettle hammer
shovel flag drum guitar radio camera ticket envelope glove scarf button stone shell feather
leaf/leaves flower branch pillow towel bowl fork brush wallet jacket boot sock sweater
necklace tent suitcase notebook""".split()

_FOODS = """apple orange egg potato/potatoes tomato/tomatoes carrot onion cake pie sandwich
biscuit lemon pear peach banana cookie pumpkin melon cherry""".split()

_MASS_FOODS = "bread cheese rice honey butter jam sugar porridge chocolate flour".split()
_DRINKS = "milk tea coffee water juice lemonade soup".split()

_PERSON_ADJ = """young old tall kind clever tired hungry happy sad angry brave quiet friendly
lazy busy careful curious nervous proud polite cheerful sleepy gentle lucky honest patient
shy famous lonely grumpy worried excited""".split()

_THING_ADJ = """big small old new red blue green yellow brown black white heavy light round
wooden broken clean dirty empty full shiny soft warm cold wet dry long short strange lovely
tiny huge plain bright dark golden silver cheap expensive beautiful ugly noisy useful rusty
striped""".split()

_ANIMAL_ADJ = """young old big small brown black white gray spotted hungry tired sleepy lazy
friendly gentle noisy curious clever tiny shy little fat thin wild""".split()

_FOOD_ADJ = (
    "fresh ripe sweet sour warm cold delicious tasty stale spicy salty juicy large small".split()
)
_DRINK_ADJ = "hot cold warm fresh sweet strong bitter".split()

_THING_VERBS = """find:found carry:carried drop:dropped buy:bought sell:sold paint:painted
clean:cleaned fix:fixed lose:lost hide:hid wash:washed borrow:borrowed pack:packed
wrap:wrapped lift:lifted move:moved kick:kicked throw:threw catch:caught bring:brought
take:took mend:mended notice:noticed want:wanted need:needed keep:kept break:broke
check:checked open:opened hold:held fill:filled polish:polished return:returned steal:stole
send:sent forget:forgot share:shared show:showed""".split()

_FOOD_VERBS = """eat:ate cook:cooked bake:baked slice:sliced buy:bought sell:sold share:shared
taste:tasted serve:served cut:cut peel:peeled bring:brought carry:carried want:wanted
order:ordered prepare:prepared pick:picked wash:washed""".split()

_MASS_VERBS = """eat:ate buy:bought sell:sold share:shared taste:tasted serve:served
bring:brought want:wanted order:ordered""".split()

_DRINK_VERBS = """drink:drank pour:poured spill:spilled heat:heated buy:bought share:shared
taste:tasted serve:served bring:brought order:ordered make:made""".split()

_PERSON_VERBS = """see:saw meet:met help:helped call:called follow:followed visit:visited
thank:thanked watch:watched hear:heard greet:greeted find:found invite:invited warn:warned
remember:remembered photograph:photographed wait_for:waited_for look_for:looked_for
talk_to:talked_to wave_at:waved_at teach:taught surprise:surprised""".split()

_ANIMAL_VERBS = """feed:fed chase:chased brush:brushed wash:washed see:saw find:found
follow:followed watch:watched hear:heard photograph:photographed look_for:looked_for""".split()

_INTRANSITIVE = """sleep:slept laugh:laughed smile:smiled wait:waited sing:sang dance:danced
arrive:arrived sit_down:sat_down stand_up:stood_up cry:cried shout:shouted
whisper:whispered listen:listened work:worked play:played rest:rested swim:swam jump:jumped
hurry:hurried stay:stayed disappear:disappeared wake_up:woke_up fall_asleep:fell_asleep
read:read cook:cooked write:wrote travel:traveled study:studied""".split()

_ANIMAL_INTRANSITIVE = """sleep:slept wait:waited play:played rest:rested swim:swam
jump:jumped hide:hid run_away:ran_away disappear:disappeared wake_up:woke_up
fall_asleep:fell_asleep""".split()

_MOTION = """walk:walked run:ran drive:drove ride:rode hurry:hurried go:went return:returned
come:came travel:traveled""".split()

_ADVERBS = """quickly slowly quietly carefully happily gently loudly patiently proudly calmly
nervously politely eagerly sadly softly bravely""".split()

_TIMES = """yesterday|last night|this morning|this afternoon|on monday|on tuesday|on wednesday
|on thursday|on friday|on saturday|on sunday|last week|last month|last summer|after lunch
|before dinner|at noon|at midnight|in the spring|in the summer|in the autumn|in the winter
|early in the morning|late at night|an hour ago|two days ago|three weeks ago|last year
|on the weekend|at seven o'clock|at half past four|after school|during the storm
|before sunrise|after the rain""".replace("\n", "").split("|")

_FUTURE_TIMES = """tomorrow|tonight|this evening|after lunch|before dinner|on monday
|next week|right now|at noon|in the morning""".replace("\n", "").split("|")

_HABITS = """every morning|every day|on sundays|in the evening|twice a week|most days
|after school|before breakfast|every winter|at the weekend""".replace("\n", "").split("|")

_NUMBERS = """two three four five six seven eight nine ten eleven twelve fifteen twenty
thirty forty fifty|a hundred|a few|several|many""".replace("\n", " ").split("|")
_NUMBERS = _NUMBERS[0].split() + _NUMBERS[1:]

# Places with the prepositions that sound natural for them.
_PLACES: dict[str, list[str]] = {
    "in": """kitchen garden market library forest village school church park square hotel
museum castle valley cellar attic bedroom hallway city office shop barn field harbor hospital
station bakery""".split(),
    "at": "market station library school church bakery hospital office harbor hotel museum beach farm".split(),
    "on": "hill beach bridge farm island porch road mountain train roof".split(),
    "near": "river lake bridge station school castle forest harbor mountain church market farm".split(),
    "by": "river lake sea window fire door gate fence well".split(),
    "behind": "barn house church school shop fence door curtain hill".split(),
    "under": "bridge table bed tree stairs".split(),
    "across": "river field road square valley street".split(),
    "along": "river road beach path street wall".split(),
    "outside": "station school library bakery hotel church shop castle".split(),
}
_DESTINATIONS = """market station library school church park village city river lake beach
farm harbor hospital office bakery castle forest museum hotel""".split()

_CONTAINERS = """on the table|under the bed|in the basket|behind the door|in the drawer
|on the shelf|next to the window|in the cupboard|under the stairs|by the fire|in the box
|on the chair""".replace("\n", "").split("|")

_WEATHER = "cold warm windy rainy sunny foggy cloudy stormy".split()
_SUBORDINATORS = ["when", "after", "before", "while", "because", "although", "as soon as"]
_REPORTING = ["said", "thought", "knew", "heard", "explained", "noticed", "remembered", "hoped"]
_FEELINGS = ["happy", "surprised", "glad", "worried", "sorry", "proud", "pleased"]

_NOT_IMPERATIVE = (
    "lose",
    "forget",
    "steal",
    "break",
    "drop",
    "notice",
    "need",
    "want",
    "spill",
    "surprise",
    "hear",
    "remember",
)

_AN_EXCEPTIONS_A = ("use", "uni", "eu", "one", "once")  # vowel letter, consonant sound
_AN_EXCEPTIONS_AN = ("honest", "hour", "heir")  # consonant letter, vowel sound


# ---------------------------------------------------------------------------------------
# Morphology helpers.
# ---------------------------------------------------------------------------------------


def _noun(entry: str) -> tuple[str, str]:
    """Returns (singular, plural) for a noun entry."""
    if "/" in entry:
        singular, plural = entry.split("/")
        return singular, plural
    if entry.endswith(("s", "x", "ch", "sh", "z")):
        return entry, entry + "es"
    if entry.endswith("y") and entry[-2] not in "aeiou":
        return entry, entry[:-1] + "ies"
    return entry, entry + "s"


def _verb(entry: str) -> tuple[str, str]:
    """Returns (base, past) for a verb entry."""
    base, past = entry.split(":")
    return base.replace("_", " "), past.replace("_", " ")


def _third_person(base: str) -> str:
    """Present-tense third-person singular of a (possibly multi-word) base form."""
    head, _, rest = base.partition(" ")
    irregular = {"have": "has", "go": "goes", "do": "does"}
    if head in irregular:
        head = irregular[head]
    elif head.endswith(("s", "x", "ch", "sh", "z", "o")):
        head += "es"
    elif head.endswith("y") and head[-2] not in "aeiou":
        head = head[:-1] + "ies"
    else:
        head += "s"
    return f"{head} {rest}" if rest else head


def _article(word: str) -> str:
    """'a' or 'an' by the sound of the next word."""
    if word.startswith(_AN_EXCEPTIONS_AN):
        return "an"
    if word.startswith(_AN_EXCEPTIONS_A):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


@dataclasses.dataclass(frozen=True)
class _Phrase:
    """A noun phrase with the agreement facts that verbs need."""

    text: str
    plural: bool = False
    first_person: bool = False

    @property
    def third_singular(self) -> bool:
        return not self.plural and not self.first_person


# ---------------------------------------------------------------------------------------
# The grammar. Each function takes the random generator and returns text (or a phrase).
# ---------------------------------------------------------------------------------------


class _Grammar:
    """Holds the random generator; methods are grammar rules."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, items: Sequence[str]) -> str:
        return items[self.rng.randrange(len(items))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # Noun phrases -----------------------------------------------------------------------

    def _determined(
        self,
        noun_entry: str,
        adjectives: Sequence[str],
        p_adj: float,
        allow_plural: bool = True,
        allow_possessive: bool = True,
    ) -> _Phrase:
        singular, plural = _noun(noun_entry)
        adj = self.pick(adjectives) + " " if self.chance(p_adj) else ""
        roll = self.rng.random()
        if allow_plural and roll < 0.2:
            number = self.pick(_NUMBERS)
            return _Phrase(f"{number} {adj}{plural}", plural=True)
        if allow_plural and roll < 0.3:
            return _Phrase(f"the {adj}{plural}", plural=True)
        if allow_possessive and roll < 0.45:
            owner = self.pick(["my", "your", "his", "her", "our", "their"])
            if self.chance(0.3):
                owner = self.pick(_NAMES).capitalize() + "'s"
            return _Phrase(f"{owner} {adj}{singular}")
        if roll < 0.7:
            return _Phrase(f"the {adj}{singular}")
        if roll < 0.8:
            return _Phrase(f"{self.pick(['this', 'that'])} {adj}{singular}")
        word = adj + singular
        return _Phrase(f"{_article(word)} {word}")

    def person(self, allow_pronoun: bool = False) -> _Phrase:
        roll = self.rng.random()
        if allow_pronoun and roll < 0.15:
            pronoun = self.pick(["I", "we", "she", "he", "they"])
            return _Phrase(
                pronoun, plural=pronoun in ("we", "they"), first_person=pronoun in ("I", "we")
            )
        if roll < 0.45:
            name = self.pick(_NAMES).capitalize()
            if self.chance(0.1):
                other = self.pick([n for n in _NAMES if n != name.lower()]).capitalize()
                return _Phrase(f"{name} and {other}", plural=True)
            return _Phrase(name)
        return self._determined(self.pick(_PEOPLE), _PERSON_ADJ, 0.35)

    def animal(self) -> _Phrase:
        return self._determined(self.pick(_ANIMALS), _ANIMAL_ADJ, 0.35)

    def thing(self) -> _Phrase:
        return self._determined(self.pick(_THINGS), _THING_ADJ, 0.5)

    def food(self) -> _Phrase:
        return self._determined(self.pick(_FOODS), _FOOD_ADJ, 0.4)

    def mass(self, nouns: Sequence[str], adjectives: Sequence[str]) -> _Phrase:
        noun = self.pick(nouns)
        adj = self.pick(adjectives) + " " if self.chance(0.4) else ""
        det = self.pick(["some", "the", "the", "a little", "more", "my", "their"])
        return _Phrase(f"{det} {adj}{noun}")

    def place(self) -> str:
        prep = self.pick(list(_PLACES))
        return f"{prep} the {self.pick(_PLACES[prep])}"

    def time(self) -> str:
        return self.pick(_TIMES)

    def extras(self, p_place: float = 0.4, p_time: float = 0.3) -> str:
        """Optional place and time adjuncts (with a leading space when present)."""
        out = ""
        if self.chance(p_place):
            out += " " + self.place()
        if self.chance(p_time):
            out += " " + self.time()
        return out

    # Verb phrases: (base-form VP, past-tense VP) so clauses can be statements,
    # questions or infinitives alike. -------------------------------------------------------

    def transitive_vp(self) -> tuple[str, str]:
        roll = self.rng.random()
        if roll < 0.4:
            base, past = _verb(self.pick(_THING_VERBS))
            obj = self.thing().text
        elif roll < 0.55:
            base, past = _verb(self.pick(_FOOD_VERBS))
            obj = self.food().text
        elif roll < 0.62:
            base, past = _verb(self.pick(_MASS_VERBS))
            obj = self.mass(_MASS_FOODS, _FOOD_ADJ).text
        elif roll < 0.7:
            base, past = _verb(self.pick(_DRINK_VERBS))
            obj = self.mass(_DRINKS, _DRINK_ADJ).text
        elif roll < 0.85:
            base, past = _verb(self.pick(_PERSON_VERBS))
            obj = self.person().text
        else:
            base, past = _verb(self.pick(_ANIMAL_VERBS))
            obj = self.animal().text
        return f"{base} {obj}", f"{past} {obj}"

    def intransitive_vp(self) -> tuple[str, str]:
        roll = self.rng.random()
        if roll < 0.45:
            base, past = _verb(self.pick(_INTRANSITIVE))
            tail = " " + self.pick(_ADVERBS) if self.chance(0.3) else ""
        else:
            base, past = _verb(self.pick(_MOTION))
            dest = "home" if self.chance(0.15) else "to the " + self.pick(_DESTINATIONS)
            tail = " " + dest
            if self.chance(0.25):
                tail = " " + self.pick(_ADVERBS) + tail
        return base + tail, past + tail

    def vp(self, p_transitive: float = 0.65) -> tuple[str, str]:
        if self.chance(p_transitive):
            return self.transitive_vp()
        return self.intransitive_vp()

    # Clauses --------------------------------------------------------------------------------

    def clause(self, allow_pronoun: bool = True, short: bool = False) -> str:
        """A past-tense declarative clause without final punctuation."""
        roll = self.rng.random()
        subj = self.person(allow_pronoun=allow_pronoun)
        was = "was" if subj.third_singular or subj.text == "I" else "were"
        if roll < 0.55:
            _, past = self.vp()
            return subj.text + " " + past + ("" if short else self.extras())
        if roll < 0.65:
            return f"{self.animal().text} {_verb(self.pick(_ANIMAL_INTRANSITIVE))[1]}" + (
                "" if short else self.extras(0.6, 0.2)
            )
        if roll < 0.75:
            adj = self.pick(_PERSON_ADJ)
            very = self.pick(["very ", "quite ", "rather ", "", ""])
            return f"{subj.text} {was} {very}{adj}" + ("" if short else self.extras(0.3, 0.3))
        if roll < 0.82:
            thing = self.thing()
            put = self.pick(["put", "left", "found", "kept", "saw"])
            return f"{subj.text} {put} {thing.text} {self.pick(_CONTAINERS)}"
        if roll < 0.9:
            base, _ = self.transitive_vp()
            want = self.pick(
                [
                    "wanted to",
                    "decided to",
                    "forgot to",
                    "tried to",
                    "hoped to",
                    "had to",
                    "promised to",
                    "could not",
                    "did not",
                ]
            )
            return f"{subj.text} {want} {base}" + ("" if short else self.extras(0.3, 0.2))
        if roll < 0.95:
            giver = self.pick(["gave", "showed", "sent", "brought", "sold", "lent"])
            return f"{subj.text} {giver} {self.person().text} {self.thing().text}"
        weather = self.pick(_WEATHER)
        where = " " + self.place() if self.chance(0.5) else ""
        return f"it was {weather}{where}" + (f" {self.time()}" if self.chance(0.5) else "")

    # Sentence types -------------------------------------------------------------------

    def simple(self) -> str:
        return self.clause() + "."

    def short(self) -> str:
        roll = self.rng.random()
        if roll < 0.3:
            return self.clause(short=True) + "."
        if roll < 0.55:
            base, _ = _verb(self.pick(_THING_VERBS))
            adv = " " + self.pick(_ADVERBS) if self.chance(0.4) else ""
            please = "please " if self.chance(0.5) else ""
            return f"{please}{base} {self.thing().text}{adv}."
        if roll < 0.75:
            subj = self.person()
            return f"{subj.text} {_verb(self.pick(_INTRANSITIVE))[1]} {self.time()}."
        if roll < 0.9:
            return f"where is {self._determined(self.pick(_THINGS), _THING_ADJ, 0.4, False).text}?"
        word = f"{self.pick(_THING_ADJ)} {_noun(self.pick(_THINGS))[0]}"
        return f"{self.pick(['what', 'such'])} {_article(word)} {word}!"

    def question(self) -> str:
        roll = self.rng.random()
        subj = self.person(allow_pronoun=True)
        if subj.text == "I":
            subj = _Phrase("I", first_person=True)
        if roll < 0.3:
            base, _ = self.vp()
            return f"did {subj.text} {base}{self.extras(0.3, 0.3)}?"
        if roll < 0.45:
            wh = self.pick(["where", "why", "when", "how"])
            base, _ = self.transitive_vp()
            return f"{wh} did {subj.text} {base}?"
        if roll < 0.6:
            noun = _noun(self.pick(_THINGS + _FOODS))[1]
            verb, _ = _verb(
                self.pick(
                    ["buy:", "sell:", "find:", "count:", "carry:", "bring:", "need:", "want:"]
                )
            )
            return f"how many {noun} did {subj.text} {verb}{self.extras(0.4, 0.3)}?"
        if roll < 0.75:
            _, past = self.transitive_vp()
            return f"who {past}{self.extras(0.5, 0.3)}?"
        if roll < 0.85:
            if self.chance(0.5):
                wh, verbs = "what", ["see", "find", "bring", "hear", "want", "need", "sell", "buy"]
            else:
                wh, verbs = "who", ["see", "find", "hear", "meet", "visit", "help", "call"]
            verb = self.pick(verbs)
            return f"{wh} did {subj.text} {verb} {self.place()} {self.time()}?"
        base, _ = self.vp()
        modal = self.pick(["will", "can", "should", "could", "would"])
        return f"{modal} {subj.text} {base}{self.extras(0.3, 0.3)}?"

    def imperative(self) -> str:
        base, _ = self.transitive_vp()
        while base.split()[0] in _NOT_IMPERATIVE:
            base, _ = self.transitive_vp()
        start = self.pick(["please ", "please ", "", "don't "])
        tail = " " + self.place() if self.chance(0.4) else ""
        if self.chance(0.3):
            tail += " " + self.pick(_FUTURE_TIMES)
        if self.chance(0.25):
            tail += " " + self.pick(
                [
                    "before it gets dark",
                    "if you can",
                    "when you are ready",
                    "and then come back",
                    "so that we can leave",
                ]
            )
        return f"{start}{base}{tail}."

    def description(self) -> str:
        """Present-tense descriptions with subject-verb agreement."""
        roll = self.rng.random()
        if roll < 0.35:
            thing = self.thing()
            be = "are" if thing.plural else "is"
            adj = self.pick(_THING_ADJ)
            second = f" and {self.pick(_THING_ADJ)}" if self.chance(0.3) else ""
            return f"{thing.text} {self.place()} {be} {adj}{second}."
        if roll < 0.55:
            number = self.pick(_NUMBERS)
            noun = _noun(self.pick(_THINGS + _ANIMALS + _FOODS))[1]
            return f"there are {number} {noun} {self.place()}."
        subj = self.person(allow_pronoun=True)
        base, _ = self.vp()
        verb = _third_person(base) if subj.third_singular else base
        habit = self.pick(_HABITS)
        if self.chance(0.5):
            return f"{habit}, {subj.text} {verb}."
        return f"{subj.text} {verb} {habit}."

    def compound(self) -> str:
        first, second = self.clause(), self.clause()
        return f"{first}, {self.pick(['and', 'but', 'so'])} {second}."

    def complex(self) -> str:
        sub = self.pick(_SUBORDINATORS)
        first, second = self.clause(), self.clause()
        if self.chance(0.5):
            return f"{sub} {first}, {second}."
        return f"{first} {sub} {second}."

    def reported(self) -> str:
        subj = self.person(allow_pronoun=True)
        if self.chance(0.3):
            verb = f"told {self.person().text}"
        else:
            verb = self.pick(_REPORTING)
        inner = self.complex()[:-1] if self.chance(0.3) else self.clause()
        return f"{subj.text} {verb} that {inner}."

    def feeling(self) -> str:
        subj = self.person(allow_pronoun=True)
        was = "was" if subj.third_singular or subj.text == "I" else "were"
        return f"{subj.text} {was} {self.pick(_FEELINGS)} that {self.clause()}."

    def relative(self) -> str:
        person = self._determined(self.pick(_PEOPLE), _PERSON_ADJ, 0.3, allow_plural=False)
        _, inner = self.transitive_vp()
        _, outer = self.vp()
        return f"{person.text} who {inner} {outer}{self.extras(0.3, 0.3)}."

    def long(self) -> str:
        clauses = [self.clause() for _ in range(3)]
        if self.chance(0.5):
            return f"{clauses[0]}, {clauses[1]}, and {clauses[2]}."
        sub = self.pick(_SUBORDINATORS)
        return f"{sub} {clauses[0]}, {clauses[1]}, {self.pick(['and', 'but', 'so'])} {clauses[2]}."

    def sentence(self) -> str:
        rules: list[tuple[float, Callable[[], str]]] = [
            (0.08, self.short),
            (0.12, self.simple),
            (0.11, self.question),
            (0.05, self.imperative),
            (0.08, self.description),
            (0.13, self.compound),
            (0.13, self.complex),
            (0.09, self.reported),
            (0.04, self.feeling),
            (0.05, self.relative),
            (0.14, self.long),
        ]
        roll = self.rng.random() * sum(w for w, _ in rules)
        for weight, rule in rules:
            roll -= weight
            if roll < 0:
                return rule()
        return rules[-1][1]()


def _finish(text: str) -> str:
    """Capitalises the first letter and 'I'; the raw text keeps its punctuation."""
    words = ["I" if w == "i" else w for w in text.split(" ")]
    text = " ".join(words)
    return text[0].upper() + text[1:]


MIN_WORDS = 7
MAX_WORDS = 30


def generate_sentences(num: int, seed: int) -> list[str]:
    """Returns `num` distinct sentences, the same ones for the same seed.

    Sentences outside [MIN_WORDS, MAX_WORDS] words are redrawn, so that synthesized
    speech stays within roughly 2 to 12 seconds.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    grammar = _Grammar(random.Random(seed))
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    max_attempts = 50 * num + 1000
    while len(out) < num:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(
                f"Only {len(out)} distinct sentences after {attempts} draws; "
                f"the grammar cannot supply {num}."
            )
        sentence = _finish(grammar.sentence())
        if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS or sentence in seen:
            continue
        seen.add(sentence)
        out.append(sentence)
    return out


def vocabulary(sentences: Sequence[str]) -> dict[str, int]:
    """Word counts over normalised sentences (handy for checking vocabulary size)."""
    from gpa_jax.text import normalize_transcript

    counts: dict[str, int] = {}
    for sentence in sentences:
        for word in normalize_transcript(sentence).split():
            counts[word] = counts.get(word, 0) + 1
    return counts
