"""The findings file (``ablations/findings.yaml``): arms, claims, their pre-stated checks, the
statistics the verdicts use, and the measure syntax.

Measures (``parse_measure``):

- ``CURVE@W``: a logged curve (``fidelity``, ``fidelity/colour``, ``sprite_speed``...) over a
  window W of latent frames: ``first`` = [0, window) (the 1x video), ``last`` = the final
  ``window`` frames (24x), ``drop`` = first - last, ``whole`` = [window, latent_frames) (every
  frame past the 1x video), ``binsK`` = the mean of the K-frame bins' means over the same span
  (each stretch weighs the same however many finite values it has);
- ``DERIVED@W``: a ratio of logged curves over the same window (:data:`DERIVED`), e.g.
  ``boundary_ratio@last`` = mean block-boundary jump / mean within-block change, both inside W;
- ``SCALAR``: a logged scalar metric (``recall``, ``recall/mid``, ``rope_power/f1``...);
- ``kv_linearity``, ``kv_growth``: summaries of the whole KV-bytes curve (:data:`WHOLE`);
- ``CURVE@paired``: a sparse 0 / 1 curve whose steps are events set by the prompt (the memory
  world's return moments, ``recall_curve/beyond_colour``), compared between a test's arm and
  baseline on the same seed at the steps finite in both: the moment-weighted difference
  (``toolkit.findings.measures.paired_values``). Only for tests with a baseline.

A measure is *exact* when it depends on the arm's config only, not on the seed (the cache's
accounting, :data:`EXACT`): with ``statistics.exact`` it is reported as its value, not tested.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from toolkit.errors import ConfigError

SPEC = Path(__file__).resolve().parents[2] / "ablations" / "findings.yaml"
EXPECT = ("greater", "less", "within", "at_most", "at_least")
#: Quick runs' first prompt when the file names none: far from any confirmatory range.
QUICK_FIRST = 1000
WINDOWS = ("first", "last", "drop", "whole", "paired")  # and binsK (K latent frames per bin)
BINS = re.compile(r"bins([1-9][0-9]*)")
#: Measures computed from a whole curve rather than a window of it.
WHOLE = {"kv_linearity": "kv_bytes", "kv_growth": "kv_bytes"}
#: Ratios of logged curves over one window: name -> (numerator, denominator, block filter).
#: The filter (a 0 / 1 curve on the same steps) keeps numerator values where it is 1
#: (``event``) or 0 (``quiet``); the denominator always uses every value in the window.
DERIVED: dict[str, tuple[str, str, str | None]] = {
    "boundary_ratio": ("boundary_jump", "boundary_jump/within", None),
    "event_jump": ("boundary_jump", "boundary_jump/within", "cache_events"),
    "quiet_jump": ("boundary_jump", "boundary_jump/within", "cache_events"),
}
#: Curves and scalars set by the arm's config alone (the cache's accounting): the same for every
#: seed, so exact values rather than samples.
EXACT = ("kv_bytes", "kv_tokens", "context_tokens", "peak_kv_bytes", "cache_events")
TITLE = "Findings: the paper's claims, re-measured on the built-in world"


# --- measures --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measure:
    """A parsed measure (see the module docstring for the syntax).

    Attributes:
        text: the measure as written.
        kind: ``curve`` (a logged curve over a window), ``derived`` (a ratio of curves over a
            window), ``scalar`` (a logged scalar), ``whole`` (a KV-curve summary) or ``paired``
            (a sparse curve compared event by event with the baseline's).
        name: the part before ``@``.
        window: ``first``, ``last``, ``drop``, ``whole``, ``binsK``, or None.
        curves: the logged series it reads (numerator, denominator, filter for derived ones).
        exact: set by the arm's config alone (:data:`EXACT`): reported, not tested.
        bounds: (low, high) the values cannot leave (``toolkit.runs.aggregate.value_range`` of the
            metric's unit; infinite when unbounded).
    """

    text: str
    kind: str
    name: str
    window: str | None
    curves: tuple[str, ...]
    exact: bool
    bounds: tuple[float, float] = (-math.inf, math.inf)

    @property
    def bins(self) -> int | None:
        """K of a ``binsK`` window."""
        hit = BINS.fullmatch(self.window or "")
        return int(hit.group(1)) if hit else None

    def at(self, window: str) -> str | None:
        """The same measure in another window (None for scalars, KV summaries and drops)."""
        if self.window in (None, "drop", "paired"):
            return None
        return f"{self.name}@{window}"


def _series(series: str, kinds: tuple[str, ...], where: str, text: str) -> None:
    """The metric of a logged series exists, is of one of ``kinds``, and names its sub-series."""
    from toolkit.metrics import METRICS

    metric, _, sub = series.partition("/")
    names = [n for n, m in METRICS.items().items() if m.kind in kinds]
    _choice(f"{where}: {'curve' if 'scalar' not in kinds else 'metric'} of {text!r}", metric,
            names)
    declared = METRICS.get(metric).series
    if declared and sub not in declared:
        allowed = [f"{metric}/{s}" if s else metric for s in declared]
        _choice(f"{where}: series of {text!r}", series, allowed)


def parse_measure(text: str, where: str = "measure") -> Measure:
    """Parse and check a measure; a bad one raises ConfigError naming what is allowed."""
    from toolkit.runs.aggregate import value_range

    if text in WHOLE:
        return Measure(text, "whole", text, None, (WHOLE[text],), True)
    if "@" not in text:
        _series(text, ("scalar",), where, text)
        return Measure(text, "scalar", text, None, (text,),
                       text.split("/", 1)[0] in EXACT, value_range(text))
    name, window = text.split("@", 1)
    if not BINS.fullmatch(window):
        _choice(f"{where}: window of {text!r}", window, [*WINDOWS, "binsK"])
    if name in DERIVED:
        num, den, filt = DERIVED[name]
        curves = (num, den) + ((filt,) if filt else ())
        kind, exact, bounds = "derived", False, (0.0, math.inf)
    else:
        _series(name, ("curve_frame", "curve_block"), where, text)
        kind, curves = "curve", (name,)
        exact, bounds = name.split("/", 1)[0] in EXACT, value_range(name)
    if window == "drop":
        bounds = (bounds[0] - bounds[1], bounds[1] - bounds[0])
    if window == "paired":
        if kind != "curve" or bounds != (0.0, 1.0):
            raise ConfigError(f"{where}: {text!r}: @paired compares a 0 / 1 curve (e.g. "
                              "recall_curve/beyond_colour) event by event; "
                              f"{name!r} is not one")
        # per-seed values are moment-weighted sums: the floor stays, the ceiling does not
        kind, bounds = "paired", (0.0, math.inf)
    return Measure(text, kind, name, window, curves, exact, bounds)


def check_measure(measure: str, where: str) -> None:
    """Raise ConfigError unless ``measure`` parses (see :func:`parse_measure`)."""
    parse_measure(measure, where)


def check_figure(figure: dict[str, Any], where: str, arms: list[str]) -> None:
    """Raise ConfigError unless a claim's figure names a logged curve (``fidelity``,
    ``boundary_jump/local``) and known arms: a figure plots the curve over the whole rollout,
    so a window (``@last``), a derived ratio or a whole-curve summary is not one."""
    from toolkit.metrics import METRICS

    extra = sorted(set(figure) - {"measure", "arms"})
    if extra:
        raise ConfigError(f"{where}: unknown figure keys {extra}; allowed: measure, arms")
    measure = figure.get("measure")
    if not isinstance(measure, str) or not measure:
        raise ConfigError(f"{where}: figure measure={measure!r}: name a logged curve, e.g. "
                          "fidelity")
    name = measure.split("@", 1)[0]
    if name in DERIVED:
        curve = DERIVED[name][0]
        logged = [f"{curve}/{s}" if s else curve for s in METRICS.get(curve).series or ("",)]
        raise ConfigError(f"{where}: figure measure={measure!r} is a ratio computed per window, "
                          f"not a logged curve; plot a logged one: {', '.join(logged)}")
    if name in WHOLE:
        raise ConfigError(f"{where}: figure measure={measure!r} summarises the whole curve "
                          f"{WHOLE[name]}; plot {WHOLE[name]!r}")
    if "@" in measure:
        raise ConfigError(f"{where}: figure measure={measure!r} has a window; a figure plots the "
                          f"logged curve over the whole rollout: write {name!r}")
    _series(measure, ("curve_frame", "curve_block"), where, measure)
    for arm in figure.get("arms") or []:
        _choice(f"{where}: figure arm", arm, arms)


# --- statistics ------------------------------------------------------------------------------
TESTS = ("wilcoxon", "permutation")
RULES = ("first", "margin")
INTERVALS = ("bca", "t")
CORRECTIONS = ("none", "holm")


@dataclass(frozen=True)
class Statistics:
    """How a findings file's tests are computed (its ``statistics:`` block).

    The defaults are the first findings pages' methods, so their files re-render as written.

    Attributes:
        test: ``wilcoxon`` (scipy's signed-rank test) or ``permutation`` (sign-flip test of the
            mean: exact up to ``toolkit.findings.inference.EXACT_MAX`` seeds, else Monte Carlo).
        interval: ``bca`` (bootstrap, 9,999 resamples) or ``t`` (Student t) 95% CI of the mean.
        correction: ``none`` or ``holm``: the p the verdicts use (Holm's adjusted p is always
            computed and shown).
        not_testable: share of the baseline's seeds at a bound of the measure that marks a test
            "not testable" (``toolkit.findings.stats.untestable_reason``); None: no such verdict.
        exact: measures set by the config alone (``Measure.exact``) are reported as their exact
            values and judged by the rule without a test.
        band_test: a ``within`` test holds only if, besides its CI lying inside the band, its
            p (two one-sided tests against the band's edges) is below alpha.
        resamples: random sign flips of the Monte Carlo test (above ``EXACT_MAX`` seeds).
        seed: the seed of those flips.
        rules: ``first`` (the first pages' verdicts: every test decides, all in Holm's family)
            or ``margin`` (issue 22, ``toolkit.findings.stats``): "holds" needs the CI to clear
            the margin, one primary test per claim, control claims tested first as a gate, Holm
            over the primaries only, other tests secondary and unadjusted, "not testable" only
            on saturation.
    """

    test: str = "wilcoxon"
    interval: str = "bca"
    correction: str = "none"
    not_testable: float | None = None
    exact: bool = False
    band_test: bool = False
    resamples: int = 100_000
    seed: int = 0
    rules: str = "first"

    def __post_init__(self) -> None:
        _choice("statistics.test", self.test, TESTS)
        _choice("statistics.rules", self.rules, RULES)
        _choice("statistics.interval", self.interval, INTERVALS)
        _choice("statistics.correction", self.correction, CORRECTIONS)
        if self.not_testable is not None and not 0.5 < self.not_testable <= 1:
            raise ConfigError(f"statistics.not_testable={self.not_testable}: a share of seeds "
                              "in (0.5, 1], or null for no not-testable verdict")
        if self.resamples < 1000:
            raise ConfigError(f"statistics.resamples={self.resamples}: at least 1000")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, where: str) -> Statistics:
        raw = dict(raw or {})
        names = [f.name for f in cls.__dataclass_fields__.values()]
        extra = sorted(set(raw) - set(names))
        if extra:
            raise ConfigError(f"{where}: unknown statistics keys {extra}; allowed: "
                              f"{', '.join(names)}")
        if raw.get("not_testable") is not None:
            raw["not_testable"] = float(raw["not_testable"])
        for key in ("resamples", "seed"):
            if key in raw:
                raw[key] = int(raw[key])
        for key in ("exact", "band_test"):
            if key in raw and not isinstance(raw[key], bool):
                raise ConfigError(f"statistics.{key}={raw[key]!r}: allowed true or false")
        return cls(**raw)


# --- the experiment file -----------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One pre-stated comparison: ``arm`` (minus ``baseline``) on ``measure``, and its rule."""

    name: str
    measure: str
    arm: str
    expect: str
    baseline: str | None = None
    than: float = 0.0
    margin: float = 0.0
    primary: bool | None = None  # None: the claim's first test is its primary (``margin`` rules)

    @property
    def parsed(self) -> Measure:
        """The measure, parsed (``parse_measure``)."""
        return parse_measure(self.measure, f"test {self.name!r}")

    @property
    def curve(self) -> str:
        """The logged series the measure reads first."""
        return self.parsed.curves[0]

    def at(self, window: str) -> str | None:
        """The same measure in another window (None for scalars, KV summaries and drops)."""
        return self.parsed.at(window)


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    paper: str
    tests: tuple[Check, ...]
    note: str = ""
    figures: tuple[dict[str, Any], ...] = ()
    control: bool = False  # a gate: tested first, at the full alpha (``margin`` rules)

    def primary(self) -> Check:
        """The claim's primary test: the one marked ``primary: true``, else its first."""
        marked = [t for t in self.tests if t.primary]
        return marked[0] if marked else self.tests[0]


@dataclass(frozen=True)
class Pilot:
    """How the seed count was fixed (a findings file's ``pilot:`` block), stated before the runs.

    Attributes:
        first_seed, seeds: the pilot's prompts, disjoint from the confirmatory and quick ones.
        sd: the SD of the primary statistic's per-seed differences in the pilot.
        effect: the effect the seed count must detect with 80% power at the alpha used.
    """

    first_seed: int
    seeds: int
    sd: float
    effect: float

    def prompts(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)


@dataclass(frozen=True)
class Spec:
    seeds: int
    latent_frames: int
    window: int
    quick_seeds: int
    arms: dict[str, list[str]]
    record: tuple[str, ...]
    claims: tuple[Claim, ...]
    path: Path = SPEC
    title: str = TITLE
    about: str = ""      # what this file is for, shown under the page's introduction
    first_seed: int = 0  # held-out prompts first_seed .. first_seed + seeds - 1
    statistics: Statistics = field(default_factory=Statistics)
    quick_first_seed: int = QUICK_FIRST  # quick runs' prompts: their own range
    pilot: Pilot | None = None
    columns: tuple[str, ...] = ()  # measures of the page's arms table (default: the report's)

    def prompts(self, seeds: int, quick: bool = False) -> range:
        """The held-out prompts (= run seeds) of a run with ``seeds`` seeds; quick runs use
        their own range (``quick.first_seed``), disjoint from the confirmatory one."""
        first = self.quick_first_seed if quick else self.first_seed
        return range(first, first + seeds)

    def arms_used(self) -> list[str]:
        """The arms some test or figure needs, in the file's order."""
        used = {a for c in self.claims for t in c.tests for a in (t.arm, t.baseline) if a}
        used |= {a for c in self.claims for f in c.figures for a in f.get("arms", [])}
        return [a for a in self.arms if a in used]


def _choice(what: str, value: Any, allowed: list[str] | tuple[str, ...]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), list(allowed), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{what}={value!r} is not allowed.{hint} Allowed: {', '.join(allowed)}")


def load_spec(path: str | Path = SPEC, text: str | None = None) -> Spec:
    """Read and check the findings file: every name it uses exists, every rule is complete.

    ``text``: the file's content as committed (``git show``), read instead of the working copy;
    ``path`` still names the file."""
    path = Path(path)
    if text is None and not path.exists():
        raise ConfigError(f"findings file {path} does not exist")
    loaded = OmegaConf.create(text) if text is not None else OmegaConf.load(path)
    raw = OmegaConf.to_container(loaded, resolve=True)
    keys = ("title", "about", "seeds", "first_seed", "latent_frames", "window", "quick",
            "record", "statistics", "arms", "claims", "pilot", "columns")
    unknown = set(raw) - set(keys)
    if unknown:
        raise ConfigError(f"{path.name}: unknown keys {sorted(unknown)}; allowed: "
                          f"{', '.join(keys)}")
    arms = {str(k): [str(o) for o in v] for k, v in (raw.get("arms") or {}).items()}
    claims = []
    for c in raw.get("claims") or []:
        tests = []
        for t in c.get("tests") or []:
            where = f"claim {c.get('id')!r}, test {t.get('name')!r}"
            extra = set(t) - {f.name for f in Check.__dataclass_fields__.values()}
            if extra:
                raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
            test = Check(**{k: (float(v) if k in ("than", "margin") else v) for k, v in t.items()})
            if test.primary is not None and not isinstance(test.primary, bool):
                raise ConfigError(f"{where}: primary={test.primary!r}: allowed true or false")
            _choice(f"{where}: expect", test.expect, EXPECT)
            for role in ("arm", "baseline"):
                if getattr(test, role) is not None:
                    _choice(f"{where}: {role}", getattr(test, role), list(arms))
            check_measure(test.measure, where)
            if test.parsed.kind == "paired" and not test.baseline:
                raise ConfigError(f"{where}: {test.measure!r} pairs the arm with a baseline "
                                  "moment by moment: name a baseline")
            if test.margin < 0 or (test.expect == "within" and test.margin <= 0):
                raise ConfigError(f"{where}: margin={test.margin} must be >= 0 (> 0 for within)")
            if test.expect in ("at_most", "at_least") and test.margin <= 0:
                raise ConfigError(f"{where}: margin={test.margin}: a non-superiority test "
                                  f"({test.expect}) needs a margin > 0")
            tests.append(test)
        if not tests:
            raise ConfigError(f"claim {c.get('id')!r} has no tests")
        if sum(bool(t.primary) for t in tests) > 1:
            raise ConfigError(f"claim {c.get('id')!r}: {sum(bool(t.primary) for t in tests)} "
                              "tests say primary: true; one primary test per claim")
        control = c.get("control", False)
        if not isinstance(control, bool):
            raise ConfigError(f"claim {c.get('id')!r}: control={control!r}: allowed true or "
                              "false")
        figures = tuple(c.get("figures") or ())
        for f in figures:
            check_figure(f, f"claim {c['id']!r}", list(arms))
        claims.append(Claim(id=c["id"], claim=c["claim"], paper=c.get("paper", ""),
                            note=c.get("note", ""), tests=tuple(tests), figures=figures,
                            control=control))
    quick = raw.get("quick") or {}
    spec = Spec(seeds=int(raw.get("seeds", 8)), latent_frames=int(raw["latent_frames"]),
                window=int(raw["window"]), quick_seeds=int(quick.get("seeds", 3)), arms=arms,
                record=tuple(str(r) for r in raw.get("record") or ()),
                claims=tuple(claims), path=path, title=str(raw.get("title", TITLE)),
                about=str(raw.get("about", "")), first_seed=int(raw.get("first_seed", 0)),
                statistics=Statistics.from_dict(raw.get("statistics"), path.name),
                quick_first_seed=int(quick.get("first_seed", QUICK_FIRST)),
                pilot=_pilot(raw.get("pilot"), path.name),
                columns=tuple(str(c) for c in raw.get("columns") or ()))
    for column in spec.columns:
        if parse_measure(column, f"{path.name}: columns").kind == "paired":
            raise ConfigError(f"{path.name}: columns: {column!r} compares two arms; the arms "
                              "table shows one arm's measures")
    for name, first in (("first_seed", spec.first_seed), ("quick.first_seed",
                                                         spec.quick_first_seed)):
        if first < 0:
            raise ConfigError(f"{name}={first} must be >= 0 (a held-out prompt index)")
    _disjoint(spec)
    if spec.latent_frames < 2 * spec.window:
        raise ConfigError(f"latent_frames={spec.latent_frames} must be at least twice the "
                          f"window ({spec.window}) so the 1x and 24x windows do not overlap")
    return spec


def _pilot(raw: dict[str, Any] | None, where: str) -> Pilot | None:
    if not raw:
        return None
    names = [f for f in Pilot.__dataclass_fields__]
    if sorted(raw) != sorted(names):
        raise ConfigError(f"{where}: pilot keys {sorted(raw)}; required exactly: "
                          f"{', '.join(names)}")
    pilot = Pilot(int(raw["first_seed"]), int(raw["seeds"]), float(raw["sd"]),
                  float(raw["effect"]))
    if pilot.seeds < 2 or pilot.sd <= 0 or pilot.effect <= 0 or pilot.first_seed < 0:
        raise ConfigError(f"{where}: pilot={raw}: seeds >= 2, sd > 0, effect > 0 and "
                          "first_seed >= 0")
    return pilot


def _disjoint(spec: Spec) -> None:
    """The confirmatory, quick and pilot prompt ranges share no prompt."""
    ranges = {"confirmatory": spec.prompts(spec.seeds),
              "quick": spec.prompts(spec.quick_seeds, quick=True)}
    if spec.pilot:
        ranges["pilot"] = spec.pilot.prompts()
    names = list(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = set(ranges[a]) & set(ranges[b])
            if shared:
                raise ConfigError(
                    f"the {a} prompts {ranges[a][0]}..{ranges[a][-1]} and the {b} prompts "
                    f"{ranges[b][0]}..{ranges[b][-1]} overlap (e.g. prompt {min(shared)}): "
                    "each needs its own range (first_seed, quick.first_seed, pilot.first_seed)")
