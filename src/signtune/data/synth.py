"""A seeded generator of How2Sign-style synthetic sign data that is a real translation problem.

Each clip is a sequence of signs (glosses) from an ASL-like grammar; each sign is a short smooth
trajectory in a small latent space, projected to ``feature_dim`` by a fixed random matrix. The
English side is a deterministic function of the sign sequence, but not a word-for-word one:

- sign order: time first, then a place topic, then subject-verb-object or a topicalised object
  (object-subject-verb); adjectives, numbers and the determiner ``IX`` follow the noun; ``NOT``,
  ``Q`` and WH-signs close the clause;
- English adds words that have no sign (``the``, ``a``/``an``, ``is``, ``will``, ``did``, ``does``,
  ``to``, ``at``, ``in``), inflects verbs for tense and person and nouns for number, moves the
  WH-word and the auxiliary to the front and the time phrase to the end;
- the signal co-articulates (each sign starts where the previous one ended and is pulled towards
  it), is time-warped per clip and per sign, styled per signer (a small linear map and offset),
  noisy, and framed by rest frames.

Calibration (seed 0, 990 training sentences, the default 2+2-layer d_model 128 transformer,
8 epochs, greedy val BLEU-4): lr 2e-3 batch 16 -> 69; the same with dropout 0.3 -> 42;
lr 3e-3 batch 32 -> 36; the defaults (lr 1e-3 batch 32) -> 13; lr 1e-4 -> 0.2. With the signs
given exactly (one-hot glosses) the first setting reaches 89: most of the work is the grammar.

``ensure_synthetic(out_dir, seed=0)`` is what commands call; ``generate`` always rebuilds. Both
write into a temporary sibling folder and rename it into place, so an interrupted run never
leaves half a dataset; ``synth.json`` (written last) marks a complete one.

Size: one module past 400 lines because the grammar, lexicon, motion model and writer are one
seeded algorithm whose parts share their constants; it is read top to bottom like the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from signtune.data.manifest import HOW2SIGN_REALIGNED
from signtune.errors import DataError, Problem

VERSION = 1
HEADER = HOW2SIGN_REALIGNED  # the generator writes exactly what the manifest reader expects
FPS = 24.0
N_SIGNERS = 16
N_TRAIN_SIGNERS = 14  # signers 14 and 15 appear only in val and test
HANDSHAPE_DIM = 8  # latent dims a sign holds roughly still: what it looks like
MOVEMENT_DIM = 8  # latent dims a sign moves through: how it moves
LATENT_DIM = HANDSHAPE_DIM + MOVEMENT_DIM
MIN_WORDS, MAX_WORDS = 5, 12

# ---------------------------------------------------------------------------------------------
# The grammar: sign tables and their English.

_PERSONS = {
    "BOY": ("boy", "boys"),
    "GIRL": ("girl", "girls"),
    "MAN": ("man", "men"),
    "WOMAN": ("woman", "women"),
    "TEACHER": ("teacher", "teachers"),
    "DOCTOR": ("doctor", "doctors"),
    "STUDENT": ("student", "students"),
}
_FAMILY = {"MOTHER": "mother", "FATHER": "father", "SISTER": "sister", "FRIEND": "friend"}
_POSS = {"POSS-1": "my", "POSS-2": "your"}
# gloss -> (English, agreement); "you" agrees like a plural.
_PRONOUNS = {
    "IX-1": ("I", "1sg"),
    "IX-2": ("you", "pl"),
    "HE": ("he", "3sg"),
    "SHE": ("she", "3sg"),
    "WE": ("we", "pl"),
    "THEY": ("they", "pl"),
}
# gloss -> (base, 3sg, past, -ing)
_VERBS = {
    "EAT": ("eat", "eats", "ate", "eating"),
    "COOK": ("cook", "cooks", "cooked", "cooking"),
    "BUY": ("buy", "buys", "bought", "buying"),
    "SEE": ("see", "sees", "saw", "seeing"),
    "LIKE": ("like", "likes", "liked", "liking"),
    "WANT": ("want", "wants", "wanted", "wanting"),
    "FIND": ("find", "finds", "found", "finding"),
    "READ": ("read", "reads", "read", "reading"),
    "WRITE": ("write", "writes", "wrote", "writing"),
    "OPEN": ("open", "opens", "opened", "opening"),
    "DRAW": ("draw", "draws", "drew", "drawing"),
    "CLEAN": ("clean", "cleans", "cleaned", "cleaning"),
    "WASH": ("wash", "washes", "washed", "washing"),
    "BRING": ("bring", "brings", "brought", "bringing"),
    "SLEEP": ("sleep", "sleeps", "slept", "sleeping"),
    "RUN": ("run", "runs", "ran", "running"),
    "WORK": ("work", "works", "worked", "working"),
    "PLAY": ("play", "plays", "played", "playing"),
    "DANCE": ("dance", "dances", "danced", "dancing"),
    "SWIM": ("swim", "swims", "swam", "swimming"),
    "CRY": ("cry", "cries", "cried", "crying"),
    "GO": ("go", "goes", "went", "going"),
}
_STATIVE = {"SEE", "LIKE", "WANT"}  # "now" keeps the simple present: "wants ... now"
_FOOD = ["APPLE", "CAKE", "EGG", "SANDWICH"]
_THINGS = ["BOOK", "LETTER", "CAR", "HOUSE", "BALL", "SHIRT", "PICTURE", "BOX", "DOOR", "WINDOW"]
_ANIMALS = ["DOG", "CAT"]
_OBJECTS = {g: (g.lower(), g.lower() + ("es" if g in ("BOX", "SANDWICH") else "s")) for g in _FOOD + _THINGS + _ANIMALS}
_ALL_OBJECTS = _FOOD + _THINGS + _ANIMALS
_OBJECTS_OF = {
    "EAT": _FOOD,
    "COOK": _FOOD,
    "BUY": [*_FOOD, "BOOK", "CAR", "HOUSE", "BALL", "SHIRT", "PICTURE", "BOX", *_ANIMALS],
    "SEE": _ALL_OBJECTS,
    "LIKE": _ALL_OBJECTS,
    "WANT": _ALL_OBJECTS,
    "FIND": _ALL_OBJECTS,
    "READ": ["BOOK", "LETTER"],
    "WRITE": ["BOOK", "LETTER"],
    "OPEN": ["DOOR", "WINDOW", "BOX", "LETTER", "BOOK"],
    "DRAW": ["PICTURE", "HOUSE", "CAR", "DOG", "CAT", "APPLE"],
    "CLEAN": ["CAR", "HOUSE", "WINDOW", "DOOR", "BOX"],
    "WASH": ["CAR", "SHIRT", "DOG", "CAT", "WINDOW", "APPLE"],
    "BRING": [*_FOOD, "BOOK", "LETTER", "BALL", "SHIRT", "BOX", "PICTURE", "DOG"],
}
_INTRANSITIVE = ["SLEEP", "RUN", "WORK", "PLAY", "DANCE", "SWIM", "CRY"]
_ADJECTIVES = {
    "RED": "red",
    "BLUE": "blue",
    "GREEN": "green",
    "BIG": "big",
    "SMALL": "small",
    "NEW": "new",
    "OLD": "old",
}
_ADJECTIVES_OF = {
    "APPLE": ["RED", "GREEN", "BIG", "SMALL"],
    "CAKE": ["BIG", "SMALL"],
    "EGG": ["BIG", "SMALL"],
    "SANDWICH": ["BIG", "SMALL"],
}
_NUMBERS = {"TWO": "two", "THREE": "three", "FOUR": "four"}
# gloss -> (tense, English phrase)
_TIMES = {
    "YESTERDAY": ("past", "yesterday"),
    "LAST-WEEK": ("past", "last week"),
    "TOMORROW": ("future", "tomorrow"),
    "NEXT-WEEK": ("future", "next week"),
    "NOW": ("progressive", "now"),
    "EVERY-DAY": ("present", "every day"),
}
# gloss -> (where something happens, where one goes)
_PLACES = {
    "SCHOOL": ("at school", "to school"),
    "HOME": ("at home", "home"),
    "PARK": ("in the park", "to the park"),
    "STORE": ("at the store", "to the store"),
    "KITCHEN": ("in the kitchen", "to the kitchen"),
    "LIBRARY": ("at the library", "to the library"),
    "OFFICE": ("at the office", "to the office"),
    "GARDEN": ("in the garden", "to the garden"),
}
_WH = {"WHO": "Who", "WHAT": "What", "WHERE": "Where", "WHEN": "When", "WHY": "Why"}
_MARKERS = ["IX", "NOT", "Q"]

GLOSSES: list[str] = sorted(
    {
        *_PERSONS,
        *_FAMILY,
        *_POSS,
        *_PRONOUNS,
        *_VERBS,
        *_OBJECTS,
        *_ADJECTIVES,
        *_NUMBERS,
        *_TIMES,
        *_PLACES,
        *_WH,
        *_MARKERS,
    }
)
"""Every sign of the synthetic language, in the fixed order their trajectories are drawn."""


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _subject(rng: np.random.Generator) -> tuple[list[str], str, str]:
    """Signs, English and agreement ("1sg", "3sg", "pl") of a subject; subjects are definite."""
    r = rng.random()
    if r < 0.3:
        gloss = _pick(rng, list(_PRONOUNS))
        return [gloss], *_PRONOUNS[gloss]
    if r < 0.45:
        poss = _pick(rng, list(_POSS))
        gloss = _pick(rng, list(_FAMILY))
        return [poss, gloss], f"{_POSS[poss]} {_FAMILY[gloss]}", "3sg"
    gloss = _pick(rng, list(_PERSONS))
    if rng.random() < 0.2:
        num = _pick(rng, list(_NUMBERS))
        return [gloss, num], f"the {_NUMBERS[num]} {_PERSONS[gloss][1]}", "pl"
    return [gloss], f"the {_PERSONS[gloss][0]}", "3sg"


def _object(rng: np.random.Generator, verb: str) -> tuple[list[str], str]:
    """Signs (noun, adjective, number, IX) and English of an object noun phrase."""
    noun = _pick(rng, _OBJECTS_OF[verb])
    signs, words = [noun], []
    if rng.random() < 0.35:
        adj = _pick(rng, _ADJECTIVES_OF.get(noun, list(_ADJECTIVES)))
        signs.append(adj)
        words.append(_ADJECTIVES[adj])
    plural = rng.random() < 0.25
    if plural:
        num = _pick(rng, list(_NUMBERS))
        signs.append(num)
        words.insert(0, _NUMBERS[num])
    words.append(_OBJECTS[noun][1 if plural else 0])
    if rng.random() < 0.35:  # IX points at a known referent: "the"
        signs.append("IX")
        words.insert(0, "the")
    elif not plural:
        words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    return signs, " ".join(words)


def sample_sentence(rng: np.random.Generator) -> tuple[list[str], str]:
    """One sentence of the synthetic language.

    Args:
        rng: the random stream to draw from.

    Returns:
        The sign sequence (glosses, in signing order) and its English translation, which is a
        deterministic function of the signs; English has 5-12 words.
    """
    while True:
        glosses, english = _sample_once(rng)
        n_words = sum(1 for w in english.split() if w[0].isalnum())
        if MIN_WORDS <= n_words <= MAX_WORDS:
            return glosses, english


def _sample_once(rng: np.random.Generator) -> tuple[list[str], str]:
    r = rng.random()
    kind = "decl" if r < 0.55 else "yn" if r < 0.7 else _pick(rng, list(_WH))
    if kind == "WHAT" or rng.random() < 0.65:
        verb = _pick(rng, list(_OBJECTS_OF))
    else:
        verb = "GO" if rng.random() < 0.3 else _pick(rng, _INTRANSITIVE)
    transitive = verb in _OBJECTS_OF

    time_sign: str | None = None
    if kind != "WHEN" and rng.random() < 0.7:
        time_sign = _pick(rng, list(_TIMES))
    tense, time_en = _TIMES[time_sign] if time_sign else ("present", "")
    if kind == "WHEN":
        tense = "past"
    if tense == "progressive" and verb in _STATIVE:
        tense = "present"
    place: str | None = None
    if kind != "WHERE" and (rng.random() < (0.85 if verb == "GO" else 0.3)):
        place = _pick(rng, list(_PLACES))
    negated = kind == "decl" and rng.random() < 0.35

    subj_signs, subj_en, agr = ([], "", "3sg") if kind == "WHO" else _subject(rng)
    obj_signs, obj_en = ([], "") if not transitive or kind == "WHAT" else _object(rng, verb)
    place_en = "" if place is None else _PLACES[place][1 if verb == "GO" else 0]

    # Signs: TIME PLACE-topic [OBJECT-topic] SUBJECT VERB [OBJECT] [NOT] [Q | WH].
    signs: list[str] = [time_sign] if time_sign else []
    place_first = place is not None and (verb != "GO" or rng.random() < 0.5)
    if place is not None and place_first:
        signs.append(place)
    if kind == "WHO":
        signs += [verb, *obj_signs]
    elif obj_signs and rng.random() < 0.4:
        signs += [*obj_signs, *subj_signs, verb]
    else:
        signs += [*subj_signs, verb, *obj_signs]
    if place is not None and not place_first:
        signs.append(place)
    if negated:
        signs.append("NOT")
    if kind == "yn":
        signs.append("Q")
    elif kind in _WH:
        signs.append(kind)

    base, s_form, past, ing = _VERBS[verb]
    be = {"1sg": "am", "3sg": "is", "pl": "are"}[agr]
    do = "does" if agr == "3sg" else "do"
    aux, main = {"past": ("did", base), "future": ("will", base), "progressive": (be, ing), "present": (do, base)}[
        tense
    ]
    tail = [w for w in (obj_en, place_en, time_en) if w]
    if kind == "decl":
        if negated:
            words = [subj_en, aux, "not", main]
        elif tense in ("future", "progressive"):
            words = [subj_en, aux, main]
        else:
            words = [subj_en, past if tense == "past" else s_form if agr == "3sg" else base]
        end = "."
    elif kind == "yn":
        words, end = [aux, subj_en, main], "?"
    elif kind == "WHO":
        verb_en = {"past": [past], "future": ["will", base], "progressive": ["is", ing], "present": [s_form]}[tense]
        words, end = ["Who", *verb_en], "?"
    else:
        words, end = [_WH[kind], aux, subj_en, main], "?"
    text = " ".join(words + tail)
    return signs, text[0].upper() + text[1:] + end


# ---------------------------------------------------------------------------------------------
# The signal.


def _catmull_rom(keys: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Points at ``u`` in [0, 1] on the Catmull-Rom spline through ``keys`` (K, Z)."""
    k = len(keys)
    s = np.clip(u, 0.0, 1.0) * (k - 1)
    i = np.minimum(s.astype(np.int64), k - 2)
    t = (s - i)[:, None]
    p0, p1 = keys[np.maximum(i - 1, 0)], keys[i]
    p2, p3 = keys[i + 1], keys[np.minimum(i + 2, k - 1)]
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3)


class _Signer:
    """A signer's style: a small linear map and offset in the latent space, and a tempo."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.matrix = np.eye(LATENT_DIM) + 0.2 * rng.standard_normal((LATENT_DIM, LATENT_DIM)) / np.sqrt(LATENT_DIM)
        self.offset = 0.4 * rng.standard_normal(LATENT_DIM)
        self.tempo = float(rng.uniform(0.9, 1.1))


class _Lexicon:
    """Every sign's trajectory, the signers and the projection to feature space."""

    def __init__(self, seed: int, feature_dim: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.keys: dict[str, np.ndarray] = {}
        self.length: dict[str, int] = {}
        for gloss in GLOSSES:
            n_keys = int(rng.integers(4, 9))
            # handshape: a fixed pose that drifts a little; movement: a smooth random walk
            shape = 0.6 * rng.standard_normal(HANDSHAPE_DIM)
            drift = 0.4 * rng.standard_normal(HANDSHAPE_DIM)
            steps = 0.7 * rng.standard_normal((n_keys, MOVEMENT_DIM))
            steps[0] = rng.standard_normal(MOVEMENT_DIM)
            self.keys[gloss] = np.concatenate(
                [shape + np.linspace(0.0, 1.0, n_keys)[:, None] * drift, np.cumsum(steps, axis=0)],
                axis=1,
            )
            self.length[gloss] = int(rng.integers(6, 10))
        self.rest = 0.3 * rng.standard_normal(LATENT_DIM)
        self.projection = rng.standard_normal((LATENT_DIM, feature_dim)) / np.sqrt(LATENT_DIM)
        self.signers = [_Signer(rng) for _ in range(N_SIGNERS)]

    def render(self, glosses: list[str], signer: int, rng: np.random.Generator) -> np.ndarray:
        """Frames (T, feature_dim) float32 of one clip."""
        style = self.signers[signer]
        speed = float(rng.uniform(0.8, 1.25)) * style.tempo
        parts = [np.repeat(self.rest[None], int(rng.integers(2, 5)), axis=0)]
        prev = self.rest
        for gloss in [*glosses, None]:
            if gloss is None:  # back to rest
                traj = np.repeat(self.rest[None], int(rng.integers(2, 5)), axis=0)
            else:
                n = max(3, round(self.length[gloss] * speed * rng.uniform(0.85, 1.15)))
                u = np.linspace(0.0, 1.0, n) ** np.exp(rng.uniform(-0.25, 0.25))
                traj = _catmull_rom(self.keys[gloss], u)
                # co-articulation: the previous sign pulls the start of this one towards it
                pull = float(rng.uniform(0.2, 0.45))
                traj = traj + pull * (prev - traj[0]) * ((1.0 - u) ** 2)[:, None]
            n_move = max(1, round(rng.uniform(1.0, 3.0) * speed))
            w = (np.arange(1, n_move + 1) / (n_move + 1))[:, None]
            parts.append((1 - w) * prev + w * traj[0])  # movement epenthesis
            parts.append(traj)
            prev = traj[-1]
        latent = np.concatenate(parts, axis=0) @ style.matrix.T + style.offset
        frames = latent @ self.projection
        noise = float(rng.uniform(0.2, 0.5))
        frames += noise * rng.standard_normal(frames.shape)
        return frames.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Files.


def _video_id(rng: np.random.Generator, taken: set[str]) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    while True:
        chars = [alphabet[int(i)] for i in rng.integers(0, len(alphabet), 11)]
        chars[0] = alphabet[int(rng.integers(0, 62))]  # no leading '-': kind to shells
        vid = "".join(chars)
        if vid not in taken:
            taken.add(vid)
            return vid


def _write_split(
    out: Path, name: str, n: int, lexicon: _Lexicon, seed: int, index: int, taken: set[str]
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 2 + index])
    n_signers = N_TRAIN_SIGNERS if name == "train" else N_SIGNERS
    lines = ["\t".join(HEADER)]
    lengths: list[int] = []
    while len(lengths) < n:
        vid = _video_id(rng, taken)
        video_name = f"{vid}-1-rgb_front"
        signer = int(rng.integers(n_signers))
        t = float(rng.uniform(0.5, 5.0))
        for k in range(min(int(rng.integers(3, 9)), n - len(lengths))):
            glosses, english = sample_sentence(rng)
            frames = lexicon.render(glosses, signer, rng)
            sentence_name = f"{vid}_{k}-1-rgb_front"
            np.save(out / "features" / f"{sentence_name}.npy", frames)
            end = t + len(frames) / FPS
            lines.append(f"{vid}\t{video_name}\t{vid}_{k}\t{sentence_name}\t{t:.2f}\t{end:.2f}\t{english}")
            lengths.append(len(frames))
            t = end + float(rng.uniform(0.3, 3.0))
    (out / f"how2sign_realigned_{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "sentences": n,
        "frames_min": min(lengths, default=0),
        "frames_max": max(lengths, default=0),
        "frames_mean": round(float(np.mean(lengths)), 2) if lengths else 0.0,
    }


def _params(seed: int, n_train: int, n_val: int, n_test: int, feature_dim: int) -> dict[str, Any]:
    return {
        "version": VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "feature_dim": feature_dim,
    }


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out_dir / "synth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but synthetic data."""
    if not out_dir.exists() or (out_dir / "synth.json").is_file():
        return
    if not out_dir.is_dir():
        raise DataError(Problem(str(out_dir), "exists and is not a folder", "choose another --out path"))
    ours = {"features", "synth.json", *(f"how2sign_realigned_{s}.csv" for s in ("train", "val", "test"))}
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
    if foreign:
        raise DataError(
            Problem(
                str(out_dir),
                f"is not empty and holds no synth.json, so it is not synthetic data: found {foreign[:5]}",
                "choose an empty or new folder for the synthetic data, or delete this one yourself",
            )
        )


def generate(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 300,
    n_test: int = 300,
    feature_dim: int = 64,
) -> dict[str, Any]:
    """Write a synthetic How2Sign-style dataset to ``out_dir``, replacing any earlier one.

    Writes ``features/<SENTENCE_NAME>.npy`` (float32, (T, feature_dim)), the tab-separated
    manifests ``how2sign_realigned_{train,val,test}.csv`` and, last, ``synth.json``. The
    result is byte-identical for the same arguments.

    Args:
        out_dir: the dataset folder; it must be new, empty or an earlier synthetic dataset.
        seed: seeds the lexicon, the signers and every split.
        n_train: sentences in the training split.
        n_val: sentences in the validation split.
        n_test: sentences in the test split.
        feature_dim: the width of each frame.

    Returns:
        The content of ``synth.json``: the parameters, ``version`` and per-split statistics.

    Raises:
        DataError: a parameter is out of range, or ``out_dir`` holds other files.
    """
    return _build(Path(out_dir), _params(seed, n_train, n_val, n_test, feature_dim), keep_current=False)


def _build(out_dir: Path, params: dict[str, Any], *, keep_current: bool) -> dict[str, Any]:
    seed, feature_dim = params["seed"], params["feature_dim"]
    n_train, n_val, n_test = params["n_train"], params["n_val"], params["n_test"]
    problems = [
        Problem(f"synth: {key}", f"must be >= {low}, but got {value}", f"pass {key} >= {low}")
        for key, value, low in (
            ("n_train", n_train, 1),
            ("n_val", n_val, 1),
            ("n_test", n_test, 0),
            ("feature_dim", feature_dim, 1),
        )
        if value < low
    ]
    if problems:
        raise DataError(problems)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "features").mkdir(parents=True)
        lexicon = _Lexicon(seed, feature_dim)
        taken: set[str] = set()
        meta = dict(params)
        meta["signs"] = len(GLOSSES)
        meta["signers"] = N_SIGNERS
        meta["fps"] = FPS
        meta["splits"] = {
            name: _write_split(tmp, name, n, lexicon, seed, i, taken)
            for i, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))
        }
        (tmp / "synth.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if not (keep_current and _is_current(out_dir, params)):  # another process finished first
            _swap_in(tmp, out_dir)
    finally:  # also on Ctrl-C: never leave a partial folder behind
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _swap_in(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    try:
        tmp.rename(out_dir)
    except OSError:
        with contextlib.suppress(OSError):
            old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


def ensure_synthetic(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int = 3000,
    n_val: int = 300,
    n_test: int = 300,
    feature_dim: int = 64,
) -> dict[str, Any]:
    """Generate the synthetic dataset unless ``out_dir`` already holds it with these parameters.

    Args:
        out_dir: the dataset folder.
        seed: see ``generate``.
        n_train: see ``generate``.
        n_val: see ``generate``.
        n_test: see ``generate``.
        feature_dim: see ``generate``.

    Returns:
        The content of ``synth.json``.

    Raises:
        DataError: see ``generate``.
    """
    out_dir = Path(out_dir)
    params = _params(seed, n_train, n_val, n_test, feature_dim)
    meta = _read_meta(out_dir)
    if meta is not None and all(meta.get(k) == v for k, v in params.items()):
        return meta
    return _build(out_dir, params, keep_current=True)


def _is_current(out_dir: Path, params: dict[str, Any]) -> bool:
    """Whether ``out_dir`` holds a complete dataset made with ``params``."""
    meta = _read_meta(out_dir) or {}
    return all(meta.get(k) == v for k, v in params.items())
