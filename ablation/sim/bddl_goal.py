"""Read a LIBERO task's goal from its BDDL file, and turn it into steps the scripted expert can run.

No simulator is needed: the BDDL text is parsed as an s-expression here (LIBERO's own parser imports
robosuite). A goal is a conjunction of predicates:

    (On  obj target)   obj resting on an object (plate_1) or a region (flat_stove_1_cook_region)
    (In  obj region)   obj inside a region (basket_1_contain_region, wooden_cabinet_1_top_region)
    (Open region) / (Close region|object)   drawers (cabinet regions) and the microwave door
    (TurnOn obj) / (TurnOff obj)            the stove knob

`parse_bddl(path_or_text)` -> BddlProblem (objects, fixtures, regions, goal predicates);
`plan_goal(problem)` -> ordered expert steps (PickPlace, Open, Close, TurnOn, TurnOff), or
`Unsupported(reason)` for a predicate the expert cannot do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Predicate", "Region", "BddlProblem", "PickPlace", "Articulate", "parse_bddl", "parse_sexpr",
           "plan_goal", "goal_kinds", "PLACE_PREDICATES", "ARTICULATED_PREDICATES"]

PLACE_PREDICATES = ("on", "in")
ARTICULATED_PREDICATES = ("open", "close", "turnon", "turnoff")


@dataclass(frozen=True)
class Predicate:
    name: str            # lower case: on, in, open, close, turnon, turnoff, ...
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"({self.name} {' '.join(self.args)})"


@dataclass(frozen=True)
class Region:
    name: str            # full name as used in predicates: <target>_<region>, e.g. main_table_plate_region
    target: str          # the fixture / object it belongs to
    ranges: tuple[tuple[float, float, float, float], ...] = ()   # (x_min, y_min, x_max, y_max) in the target's frame


@dataclass
class BddlProblem:
    language: str
    objects: dict[str, str]          # name -> category (movable objects)
    fixtures: dict[str, str]         # name -> category
    regions: dict[str, Region]       # full name -> Region
    goal: list[Predicate]
    obj_of_interest: list[str] = field(default_factory=list)

    def owner(self, name: str) -> str | None:
        """The object or fixture a goal argument belongs to (itself, or a region's target)."""
        if name in self.objects or name in self.fixtures:
            return name
        if name in self.regions:
            return self.regions[name].target
        for o in sorted(list(self.objects) + list(self.fixtures), key=len, reverse=True):
            if name.startswith(o + "_"):
                return o
        return None

    def is_movable(self, name: str) -> bool:
        return name in self.objects


# ----------------------------------------------------------------------------- s-expressions

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_sexpr(text: str):
    """Nested lists of strings from an s-expression text (`;` comments dropped)."""
    text = "\n".join(line.split(";", 1)[0] for line in text.splitlines())
    stack: list[list] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            if len(stack) < 2:
                raise ValueError("unbalanced ')' in BDDL")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise ValueError("unbalanced '(' in BDDL")
    return stack[0]


def _section(tree: list, key: str) -> list | None:
    for item in tree:
        if isinstance(item, list) and item and item[0] == key:
            return item
    return None


def _typed_names(sec: list | None) -> dict[str, str]:
    """`a b - cat  c - cat2` -> {a: cat, b: cat, c: cat2}."""
    out: dict[str, str] = {}
    if not sec:
        return out
    pending: list[str] = []
    toks = [t for t in sec[1:] if isinstance(t, str)]
    i = 0
    while i < len(toks):
        if toks[i] == "-" and i + 1 < len(toks):
            for n in pending:
                out[n] = toks[i + 1]
            pending = []
            i += 2
        else:
            pending.append(toks[i])
            i += 1
    for n in pending:
        out[n] = n
    return out


def _predicates(expr) -> list[Predicate]:
    """Flatten (And p1 p2 ...) into predicates; a bare predicate is a one-element conjunction."""
    if not isinstance(expr, list) or not expr:
        return []
    head = str(expr[0]).lower()
    if head == "and":
        out: list[Predicate] = []
        for e in expr[1:]:
            out += _predicates(e)
        return out
    if head in ("or", "not"):
        raise ValueError(f"goal uses '{expr[0]}', which the scripted expert does not handle")
    return [Predicate(head, tuple(str(a) for a in expr[1:]))]


def parse_bddl(source: str | Path) -> BddlProblem:
    """Parse a BDDL file (path) or its text."""
    s = str(source)
    text = Path(s).read_text() if ("(" not in s and Path(s).is_file()) else s
    tree = parse_sexpr(text)
    if not tree or not isinstance(tree[0], list) or not tree[0] or tree[0][0] != "define":
        raise ValueError("not a BDDL problem: expected (define (problem ...) ...)")
    body = tree[0]
    lang = _section(body, ":language")
    objects = _typed_names(_section(body, ":objects"))
    fixtures = _typed_names(_section(body, ":fixtures"))
    regions: dict[str, Region] = {}
    rsec = _section(body, ":regions")
    for r in (rsec or [])[1:]:
        if not isinstance(r, list) or not r:
            continue
        tgt = _section(r, ":target")
        target = str(tgt[1]) if tgt and len(tgt) > 1 else ""
        ranges: list[tuple[float, float, float, float]] = []
        rng = _section(r, ":ranges")
        if rng and len(rng) > 1 and isinstance(rng[1], list):
            for box in rng[1]:
                if isinstance(box, list) and len(box) == 4:
                    ranges.append(tuple(float(v) for v in box))
        full = f"{target}_{r[0]}" if target else str(r[0])
        regions[full] = Region(full, target, tuple(ranges))
    gsec = _section(body, ":goal")
    goal = _predicates(gsec[1]) if gsec and len(gsec) > 1 else []
    ooi = _section(body, ":obj_of_interest")
    return BddlProblem(language=" ".join(str(t) for t in lang[1:]) if lang else "", objects=objects,
                       fixtures=fixtures, regions=regions, goal=goal,
                       obj_of_interest=[str(t) for t in (ooi or [])[1:] if isinstance(t, str)])


# ----------------------------------------------------------------------------- expert steps

@dataclass(frozen=True)
class PickPlace:
    """Carry movable `obj` onto / into `target` (an object name or a region's full name)."""
    obj: str
    target: str
    relation: str        # "on" | "in"
    target_owner: str    # the object / fixture the target belongs to
    target_is_region: bool

    kind = "pick_place"


@dataclass(frozen=True)
class Articulate:
    """Open / Close / TurnOn / TurnOff of a region (drawer) or an object (microwave, stove)."""
    action: str          # open | close | turnon | turnoff
    target: str          # a region's full name or an object name
    owner: str           # the articulated object / fixture
    category: str        # its category (wooden_cabinet, microwave, flat_stove, ...)
    implied: bool = False  # not in the goal: added because something must be placed inside

    kind = "articulate"


@dataclass(frozen=True)
class Unsupported:
    predicate: Predicate
    reason: str

    kind = "unsupported"


def goal_kinds(problem: BddlProblem) -> list[str]:
    """Short description per predicate: pick_place / articulated / other."""
    out = []
    for p in problem.goal:
        if p.name in PLACE_PREDICATES:
            out.append("pick_place" if len(p.args) == 2 and problem.is_movable(p.args[0]) else "other")
        elif p.name in ARTICULATED_PREDICATES:
            out.append("articulated")
        else:
            out.append("other")
    return out


_DRAWER_CATEGORIES = ("wooden_cabinet", "white_cabinet", "slide_cabinet")
# Regions with a roof: a top-down gripper cannot lower an object into them (drawers under the
# cabinet's top and upper drawers, the microwave behind its door).
_ENCLOSED_CATEGORIES = _DRAWER_CATEGORIES + ("microwave", "short_fridge")


def plan_goal(problem: BddlProblem) -> list:
    """Ordered expert steps for the goal. Order: open what must be opened, turn knobs, pick-and-place
    (in the goal's order), close last. A placement into a drawer region gets an Open step first (the
    drawer may start closed; opening an open drawer is a no-op)."""
    opens, knobs, places, closes, unsupported = [], [], [], [], []
    for p in problem.goal:
        if p.name in PLACE_PREDICATES:
            if len(p.args) != 2:
                unsupported.append(Unsupported(p, f"{p.name} with {len(p.args)} arguments"))
                continue
            obj, target = p.args
            if not problem.is_movable(obj):
                unsupported.append(Unsupported(p, f"{obj} is not a movable object"))
                continue
            owner = problem.owner(target) or target
            is_region = target in problem.regions or (target not in problem.objects and target not in problem.fixtures)
            cat = problem.fixtures.get(owner) or problem.objects.get(owner) or ""
            if p.name == "in" and any(c in cat for c in _ENCLOSED_CATEGORIES):
                unsupported.append(Unsupported(p, f"placing inside {target} needs a side approach under the "
                                                  f"{cat}'s top, not scripted"))
                continue
            places.append(PickPlace(obj, target, p.name, owner, is_region))
            if is_region and any(c in cat for c in _DRAWER_CATEGORIES) and not target.endswith("_side"):
                a = Articulate("open", target, owner, cat, implied=True)
                if all(o.target != target for o in opens):
                    opens.append(a)
        elif p.name in ARTICULATED_PREDICATES:
            if len(p.args) != 1:
                unsupported.append(Unsupported(p, f"{p.name} with {len(p.args)} arguments"))
                continue
            target = p.args[0]
            owner = problem.owner(target) or target
            cat = problem.fixtures.get(owner) or problem.objects.get(owner) or ""
            a = Articulate(p.name, target, owner, cat)
            if p.name == "open":
                opens.append(a)
            elif p.name == "close":
                closes.append(a)
            else:
                knobs.append(a)
        else:
            unsupported.append(Unsupported(p, f"predicate '{p.name}' is not handled"))
    # A goal that both opens (for placing inside) and closes the same region: the drawer must be open
    # to place, then closed; keep both.
    return unsupported + opens + knobs + places + closes
