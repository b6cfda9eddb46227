"""training_config.yaml: Kaito's sections, kaitoflow's defaults, merging and validation.

The Go side (presets/trainingconfig.go) renders the file a Job mounts, already merged and checked;
this module does the same for the trainer run on its own, and refuses a bad file with the field
path before any model is loaded. The sections, allowed arguments, defaults and value limits both
sides use are contract.json's.
"""

import copy
import json
import os
import posixpath
import sys
from dataclasses import dataclass
from typing import Any, Self

from . import CONTRACT, ConfigError

# The sections, the arguments a workspace may set in each, the defaults and the output root are
# the contract's (contract.json, which kaitoflow embeds too): a training config is workspace content,
# and some arguments do far more than tune a run (trust_remote_code runs the model repository's
# code, push_to_hub and hub_token send the weights and a credential elsewhere, report_to ships
# metrics to a third party). kaitoflow refuses the rest when a workspace is submitted; the trainer
# refuses them too when it runs on its own.
_TRAINING_CONFIG = CONTRACT["trainingConfig"]
SECTIONS = tuple(_TRAINING_CONFIG["sections"])
ALLOWED = {section: frozenset(keys) for section, keys in _TRAINING_CONFIG["allowed"].items()}

OUTPUT_ROOT = _TRAINING_CONFIG["outputRoot"]

# A training config: its sections, each a mapping of keyword arguments, values as JSON or YAML has them.
TrainingConfig = dict[str, dict[str, Any]]
# A run outside a pod (tests, a developer's machine) may write under another root; the Job never
# sets this, and the defaults keep OUTPUT_ROOT.
OUTPUT_ROOT_ENV = "KAITOFLOW_OUTPUT_ROOT"


def defaults(method: str) -> TrainingConfig:
    """Kaito's defaults for method ("lora" or "qlora"), except two that kaitoflow changes:
    local_files_only is false because its trainer image carries no weights (it downloads the preset's
    pinned revision), and train_test_split holds 5% of the rows out to measure eval_loss. They are
    the contract's, which kaitoflow reads too."""
    cfg = copy.deepcopy(_TRAINING_CONFIG["defaults"])
    if method == "qlora":
        cfg = merge(cfg, _TRAINING_CONFIG["qlora"])
    return cfg


def parse(text: str) -> TrainingConfig:
    """Parse a training_config.yaml (JSON is YAML too, and needs no PyYAML)."""
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            import yaml  # the trainer image has PyYAML; plain JSON needs none
        except ImportError as exc:
            raise ConfigError("training_config.yaml is not JSON and PyYAML is not installed") from exc
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("training_config.yaml: {}".format(str(exc).replace("\n", " "))) from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("training_config.yaml: want a mapping of sections")
    if set(doc) == {"training_config"}:
        doc = doc["training_config"] or {}
    for name, section in doc.items():
        if name not in SECTIONS:
            raise ConfigError(
                "training_config.{}: unsupported section; want one of {}".format(name, ", ".join(SECTIONS))
            )
        if not isinstance(section, dict):
            raise ConfigError(f"training_config.{name}: want a mapping of arguments")
    return doc


def merge(base: TrainingConfig, override: TrainingConfig) -> TrainingConfig:
    """base with override's arguments laid on top, section by section."""
    out = copy.deepcopy(base)
    for name, section in override.items():
        out.setdefault(name, {}).update(copy.deepcopy(section))
    return out


@dataclass(frozen=True)
class Limit:
    """One value rule of a training config argument (contract.json's trainingConfig.limits, which
    kaitoflow applies too), checked only where the argument is set: kind "integer" (a whole number
    from low, up to high when there is one), "fraction" (a number above 0 and at most 1; what says
    what it is the share of) or "bool"."""

    section: str
    key: str
    kind: str
    low: int | None = None
    high: int | None = None
    what: str = ""

    @classmethod
    def from_contract(cls, name: str, rule: dict[str, Any]) -> Self:
        section, _, key = name.partition(".")
        limit = cls(section, key, rule["kind"], rule.get("min"), rule.get("max"), rule.get("what", ""))
        known = limit.kind in ("fraction", "bool") or (limit.kind == "integer" and limit.low is not None)
        if section not in SECTIONS or not key or not known:
            raise ValueError(f"contract.json: limit {name}: want Section.key of a section, and a known kind: {rule!r}")
        return limit

    @property
    def field(self) -> str:
        return f"training_config.{self.section}.{self.key}"

    def holds(self, value: Any) -> bool:
        """Whether value keeps to the limit. A bool is no number here, as it is none to Go."""
        if isinstance(value, bool):
            return self.kind == "bool"
        if self.kind == "integer":
            return (
                isinstance(value, int)
                and self.low is not None
                and value >= self.low
                and (self.high is None or value <= self.high)
            )
        if self.kind == "fraction":
            return isinstance(value, (int, float)) and 0 < value <= 1
        return False

    def rule(self) -> str:
        """What a value breaking the limit is told it must be."""
        if self.kind == "integer" and self.high is not None:
            return f"must be an integer from {self.low:d} to {self.high:d}"
        if self.kind == "integer" and self.low == 1:
            return "must be a positive integer"
        if self.kind == "integer":
            return f"must be an integer of at least {self.low:d}"
        if self.kind == "fraction":
            return "must be a number above 0 and at most 1" + (f" ({self.what})" if self.what else "")
        if self.kind == "bool":
            return "must be true or false"
        return "has a limit of unknown kind " + self.kind


# The value rules, in the order of their names (as kaitoflow reports them).
LIMITS = tuple(Limit.from_contract(name, rule) for name, rule in sorted(_TRAINING_CONFIG["limits"].items()))


def validate(cfg: TrainingConfig, method: str) -> list[str]:
    """Return every problem as "field.path: reason"; an empty list means valid."""
    problems = []
    for section in sorted(ALLOWED):
        for key in sorted(set(cfg.get(section, {})) - ALLOWED[section]):
            problems.append(f"training_config.{section}.{key}: not an argument a workspace may set")
    report = cfg.get("TrainingArguments", {}).get("report_to")
    if report is not None and report not in ("none", [], ["none"]):
        problems.append(f"training_config.TrainingArguments.report_to: {report!r}: want none")
    quant = cfg.get("QuantizationConfig", {})
    in4, in8 = quant.get("load_in_4bit") is True, quant.get("load_in_8bit") is True
    q = "training_config.QuantizationConfig."
    if method == "lora":
        if in4:
            problems.append(q + "load_in_4bit: lora trains a 16-bit base model; use method qlora for 4-bit")
        if in8:
            problems.append(q + "load_in_8bit: lora trains a 16-bit base model; use method qlora for a quantized one")
    elif method == "qlora":
        if not in4 and not in8:
            problems.append(q + "load_in_4bit: qlora needs a quantized base model (load_in_4bit: true)")
        if in4 and in8:
            problems.append(q + "load_in_8bit: load_in_4bit and load_in_8bit are exclusive")
    else:
        problems.append(f"method: {method!r}: want lora or qlora")

    args = cfg.get("TrainingArguments", {})
    out = args.get("output_dir")
    root = posixpath.normpath(os.environ.get(OUTPUT_ROOT_ENV) or OUTPUT_ROOT)
    if not isinstance(out, str) or not out:
        problems.append("training_config.TrainingArguments.output_dir: required, under " + root)
    else:
        clean = posixpath.normpath(out)
        if not clean.startswith("/") or (clean != root and not clean.startswith(root + "/")):
            problems.append(
                f"training_config.TrainingArguments.output_dir: {out!r} must be under {root}, "
                "where the Job mounts its output volume"
            )
    for limit in LIMITS:
        section = cfg.get(limit.section, {})
        if limit.key in section and not limit.holds(section[limit.key]):
            problems.append(f"{limit.field}: {section[limit.key]!r} {limit.rule()}")
    return problems


def load(text: str, method: str) -> TrainingConfig:
    """Parse, merge over the defaults for method, and validate; raise ConfigError on any problem."""
    cfg = merge(defaults(method), parse(text))
    problems = validate(cfg, method)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def main(argv: list[str]) -> int:
    """python -m kaitoflow_trainer.config --defaults METHOD prints the defaults as JSON; --allowed
    the arguments a workspace may set, by section."""
    if len(argv) == 2 and argv[0] == "--defaults":
        json.dump(defaults(argv[1]), sys.stdout, sort_keys=True)
        return 0
    if argv == ["--allowed"]:
        json.dump({k: sorted(v) for k, v in ALLOWED.items()}, sys.stdout, sort_keys=True)
        return 0
    print("usage: python -m kaitoflow_trainer.config --defaults lora|qlora", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
