"""The findings file (``ablations/findings.yaml``): arms, claims and their pre-stated checks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from toolkit.config import ConfigError

SPEC = Path(__file__).resolve().parents[2] / "ablations" / "findings.yaml"
EXPECT = ("greater", "less", "within")
WINDOWS = ("first", "last", "drop")
#: Measures computed from a whole curve rather than a window of it.
WHOLE = {"kv_linearity": "kv_bytes", "kv_growth": "kv_bytes"}
TITLE = "Findings: the paper's claims, re-measured on the built-in world"

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

    @property
    def curve(self) -> str:
        """The logged curve the measure reads."""
        return WHOLE.get(self.measure) or self.measure.split("@", 1)[0]

    def at(self, window: str) -> str | None:
        """The same measure in another window (None for whole-curve and drop measures)."""
        if "@" not in self.measure or self.measure.endswith("@drop"):
            return None
        return f"{self.curve}@{window}"


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    paper: str
    tests: tuple[Check, ...]
    note: str = ""
    figures: tuple[dict[str, Any], ...] = ()


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

    def prompts(self, seeds: int) -> range:
        """The held-out prompts (= run seeds) of a run with ``seeds`` seeds."""
        return range(self.first_seed, self.first_seed + seeds)

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


def check_measure(measure: str, where: str) -> None:
    """A measure is ``CURVE@first|last|drop`` of a logged curve metric, or a WHOLE one."""
    from toolkit.metrics import METRICS

    if measure in WHOLE:
        return
    if "@" not in measure:
        raise ConfigError(f"{where}: measure={measure!r}; use CURVE@{'|'.join(WINDOWS)} "
                          f"(e.g. fidelity@last) or one of {', '.join(WHOLE)}")
    curve, window = measure.split("@", 1)
    _choice(f"{where}: window of {measure!r}", window, WINDOWS)
    curves = [n for n, m in METRICS.items().items() if m.kind.startswith("curve")]
    _choice(f"{where}: curve of {measure!r}", curve.split("/", 1)[0], curves)


def load_spec(path: str | Path = SPEC) -> Spec:
    """Read and check the findings file: every name it uses exists, every rule is complete."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"findings file {path} does not exist")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    keys = ("title", "about", "seeds", "first_seed", "latent_frames", "window", "quick",
            "record", "arms", "claims")
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
            _choice(f"{where}: expect", test.expect, EXPECT)
            for role in ("arm", "baseline"):
                if getattr(test, role) is not None:
                    _choice(f"{where}: {role}", getattr(test, role), list(arms))
            check_measure(test.measure, where)
            if test.margin < 0 or (test.expect == "within" and test.margin <= 0):
                raise ConfigError(f"{where}: margin={test.margin} must be >= 0 (> 0 for within)")
            tests.append(test)
        if not tests:
            raise ConfigError(f"claim {c.get('id')!r} has no tests")
        figures = tuple(c.get("figures") or ())
        for f in figures:
            for a in f.get("arms", []):
                _choice(f"claim {c['id']!r}: figure arm", a, list(arms))
        claims.append(Claim(id=c["id"], claim=c["claim"], paper=c.get("paper", ""),
                            note=c.get("note", ""), tests=tuple(tests), figures=figures))
    quick = raw.get("quick") or {}
    spec = Spec(seeds=int(raw.get("seeds", 8)), latent_frames=int(raw["latent_frames"]),
                window=int(raw["window"]), quick_seeds=int(quick.get("seeds", 3)), arms=arms,
                record=tuple(str(r) for r in raw.get("record") or ()),
                claims=tuple(claims), path=path, title=str(raw.get("title", TITLE)),
                about=str(raw.get("about", "")), first_seed=int(raw.get("first_seed", 0)))
    if spec.first_seed < 0:
        raise ConfigError(f"first_seed={spec.first_seed} must be >= 0 (a held-out prompt index)")
    if spec.latent_frames < 2 * spec.window:
        raise ConfigError(f"latent_frames={spec.latent_frames} must be at least twice the "
                          f"window ({spec.window}) so the 1x and 24x windows do not overlap")
    return spec
