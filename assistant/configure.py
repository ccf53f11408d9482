"""Settings that stay: the user's generation defaults, the learning schedule and the gate's
thresholds, stored in the database's settings table (as the system prompt is), viewed and changed
by `assistant config show|set` and by the page.

The config dataclasses are the one source of every field's name, type, default, range and
meaning: a key is `section.field` (`learn.min_new_feedback`, or the bare field name when only one
section has it), a value is parsed by the field's type, checked by constructing the dataclass
(its own validation says what is wrong, in words), and described by the field's docstring.

  section  dataclass                   stored under      fields offered
  chat     assistant.config.Config     "chat_settings"   CHAT_FIELDS: the page's Settings
  learn    learning.config.LearnConfig "learn_config"    all but the LoRA shape (fixed across
                                                          versions) and `extra`; `show` lists
                                                          the schedule unless --all
  gate     learning.gate.GateConfig    "gate_config"     all

The learner and the auto-trigger read learn_config and gate_config at every check, so a change
counts from the next one. Chat settings are the defaults of every process opened on this home
(`apply_chat_settings`, from cli.main), and the page applies them to the running server at once.
"""
import ast
import dataclasses
import functools
import inspect
import math
import re
import types
import typing

from assistant.config import Config
from learning.config import SETTINGS_KEY as LEARN_KEY
from learning.config import SHAPE_FIELDS, LearnConfig
from learning.gate import SETTINGS_KEY as GATE_KEY
from learning.gate import GateConfig
from store.settings import get_setting, set_setting

CHAT_KEY = "chat_settings"
CHAT_FIELDS = ("default_max_new_tokens", "default_temperature", "recall")
SCHEDULE_FIELDS = ("min_new_feedback", "interval_s", "min_gap_s")


class SettingError(ValueError):
    """A key or value that cannot be stored; the message says why, for the user."""


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    cls: type
    key: str  # settings-table key
    fields: tuple[str, ...]
    shown: tuple[str, ...]  # what `show` lists without --all


def _learn_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(LearnConfig) if f.name not in (*SHAPE_FIELDS, "extra"))


SECTIONS = {s.name: s for s in (
    Section("chat", Config, CHAT_KEY, CHAT_FIELDS, CHAT_FIELDS),
    Section("learn", LearnConfig, LEARN_KEY, _learn_fields(), SCHEDULE_FIELDS),
    Section("gate", GateConfig, GATE_KEY, tuple(f.name for f in dataclasses.fields(GateConfig)),
            tuple(f.name for f in dataclasses.fields(GateConfig))),
)}


# ---- what a field is ----------------------------------------------------------------------
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string after it in the class body), or its trailing comment's
    neighbour: nothing when the class documents it otherwise."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for stmt, after in zip(body, body[1:] + [None], strict=True):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(getattr(after, "value", None), ast.Constant) and isinstance(after.value.value, str):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def summary(cls: type, name: str) -> str:
    """The first sentence of a field's docstring."""
    doc = field_docs(cls).get(name, "")
    return doc.split(". ")[0].rstrip(".") + "." if doc else ""


def _field(section: Section, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(section.cls) if f.name == name)


def _default(section: Section, name: str):
    f = _field(section, name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def resolve(key: str) -> tuple[Section, str]:
    """`section.field`, or a field name only one section offers."""
    if "." in key:
        sname, name = key.split(".", 1)
        section = SECTIONS.get(sname)
        if section is None:
            raise SettingError(f"unknown section {sname!r}: use one of {', '.join(SECTIONS)}")
        if name not in section.fields:
            if section.name == "learn" and name in SHAPE_FIELDS:
                raise SettingError(f"{key} cannot be changed: the LoRA shape is fixed across versions "
                                   "(a new version continues from the active one)")
            raise SettingError(f"unknown setting {key!r}; `assistant config show --all` lists them")
        return section, name
    owners = [s for s in SECTIONS.values() if key in s.fields]
    if not owners and key in SHAPE_FIELDS:
        return resolve(f"learn.{key}")  # says why it cannot change
    if len(owners) != 1:
        raise SettingError(f"unknown setting {key!r}; `assistant config show --all` lists them" if not owners
                           else f"{key!r} is in several sections: write {' or '.join(s.name + '.' + key for s in owners)}")
    return owners[0], key


# ---- parse, check, store ------------------------------------------------------------------
def parse(text, ftype, key: str):
    """A value of the field's type from text (the CLI) or from a widget's value (the page)."""
    if typing.get_origin(ftype) in (typing.Union, types.UnionType):
        if text is None or str(text).strip().lower() in ("none", "null", ""):
            return None
        ftype = next(a for a in typing.get_args(ftype) if a is not type(None))
    if ftype is bool:
        if isinstance(text, bool):
            return text
        words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
        if str(text).strip().lower() not in words:
            raise SettingError(f"{key} is on or off: write true or false (got {text!r})")
        return words[str(text).strip().lower()]
    if ftype in (int, float):
        try:
            number = float(str(text).strip().replace("_", ""))
        except ValueError:
            raise SettingError(f"{key} is a number (got {text!r})") from None
        if not math.isfinite(number):
            raise SettingError(f"{key} must be a finite number (got {text!r})")
        if ftype is int:
            if number != int(number):
                raise SettingError(f"{key} is a whole number (got {text!r})")
            return int(number)
        return number
    if typing.get_origin(ftype) is tuple:  # names, comma or space separated ("gate_proj,up_proj")
        names = tuple(text) if isinstance(text, (list, tuple)) else tuple(re.split(r"[\s,]+", str(text).strip()))
        if not all(names):
            raise SettingError(f"{key} is a list of names, comma-separated (got {text!r})")
        return names
    raise SettingError(f"{key} cannot be set here")


def stored(db, section: Section) -> dict:
    return dict(get_setting(db, section.key, {}) or {})


def _check(section: Section, values: dict) -> None:
    """Construct the dataclass with these values: its own validation is the range check."""
    try:
        if section.cls is Config:
            Config(**{n: v for n, v in values.items() if n in CHAT_FIELDS})
        else:
            section.cls.from_dict(values)
    except (TypeError, ValueError) as e:
        message = str(e).split(": ", 1)[-1] if str(e).startswith("invalid ") else str(e)
        raise SettingError(message) from None


def _prepared(db, section: Section, values: dict) -> tuple[dict, dict]:
    """(the section's stored dict with `values` in, {field: parsed value}); checked, not stored."""
    parsed = {}
    for name, value in values.items():
        if name not in section.fields:
            resolve(f"{section.name}.{name}")  # raises the right words
        parsed[name] = parse(value, _field(section, name).type, f"{section.name}.{name}")
    merged = {**stored(db, section), **parsed}
    _check(section, merged)
    return merged, parsed


def set_values(db, values: dict[str, dict]) -> list[str]:
    """Store fields of several sections, {section: {field: value}}, all or none: each section is
    checked whole (min_gap_s against interval_s) before anything is written. Returns the keys
    whose value changed. Raises SettingError."""
    ready = {name: _prepared(db, SECTIONS[name], v) for name, v in values.items()}
    changed = []
    for name, (merged, parsed) in ready.items():
        before = current(db, SECTIONS[name])
        set_setting(db, SECTIONS[name].key, merged)
        changed += [f"{name}.{n}" for n, v in parsed.items() if before.get(n) != v]
    return changed


def set_value(db, key: str, value) -> tuple[str, object]:
    """`assistant config set KEY VALUE`: -> (the full key, the stored value)."""
    section, name = resolve(key)
    set_values(db, {section.name: {name: value}})
    return f"{section.name}.{name}", current(db, section)[name]


def current(db, section: Section) -> dict:
    """Every offered field's value: stored, or else the dataclass default."""
    values = stored(db, section)
    return {n: values.get(n, _default(section, n)) for n in section.fields}


def rows(db, show_all: bool = False) -> list[tuple[str, object, object, str]]:
    """(key, value, default, meaning) for `show` and the page."""
    out = []
    for section in SECTIONS.values():
        values = current(db, section)
        for name in section.fields if show_all else section.shown:
            out.append((f"{section.name}.{name}", values[name], _default(section, name), summary(section.cls, name)))
    return out


# ---- chat settings in a running process -----------------------------------------------------
def apply_chat_settings(db, cfg: Config) -> Config:
    """The stored generation defaults onto `cfg` (a value stored by an older version that no
    longer passes is skipped: a bad setting must not stop the assistant from starting)."""
    values = stored(db, SECTIONS["chat"])
    try:
        _check(SECTIONS["chat"], values)
    except SettingError:
        return cfg
    for name in CHAT_FIELDS:
        if name in values:
            setattr(cfg, name, values[name])
    return cfg


# ---- the page ------------------------------------------------------------------------------
PAGE_FIELDS = [("learn", n) for n in SCHEDULE_FIELDS] + [("gate", n) for n in SECTIONS["gate"].fields]
"""The Learning tab's "Schedule and gate" form, in this order (ui.py builds one box per field)."""


def page_values(db) -> list:
    return [current(db, SECTIONS[s])[n] for s, n in PAGE_FIELDS]


def save_page(db, *values) -> str:
    """The form's values, stored all or none. -> the notice"""
    wanted: dict[str, dict] = {}
    for (section, name), value in zip(PAGE_FIELDS, values, strict=True):
        wanted.setdefault(section, {})[name] = value
    try:
        changed = set_values(db, wanted)
    except SettingError as e:
        return f"⚠ Not saved: {e}."
    return f"Saved: {', '.join(changed)}. It counts from the next check." if changed else "Nothing changed."


def save_chat_setting(runtime, name: str, value) -> str:
    """One of the chat's Settings, stored and applied to this server at once. -> the notice"""
    try:
        set_values(runtime.db, {"chat": {name: value}})
    except SettingError as e:
        return f"⚠ Not saved: {e}."
    apply_chat_settings(runtime.db, runtime.cfg)
    return ""  # quiet: a slider moved is its own feedback


def chat_values(runtime) -> list:
    """What the page's Settings show on load: stored, or else what this server was started with."""
    values = stored(runtime.db, SECTIONS["chat"])
    return [values.get(n, getattr(runtime.cfg, n)) for n in CHAT_FIELDS]


# ---- the CLI ------------------------------------------------------------------------------
def _shown(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


def cmd_config(cfg: Config, args) -> int:
    import sys

    from store import open_db

    cfg.home.mkdir(parents=True, exist_ok=True)
    db = open_db(cfg.db_path)
    if args.action == "set":
        try:
            key, value = set_value(db, args.key, args.value)
        except SettingError as e:
            print(f"Not changed: {e}.", file=sys.stderr)
            return 2
        print(f"{key} = {_shown(value)}")
        return 0
    table = rows(db, show_all=args.all)
    width = max(len(k) for k, *_ in table)
    for key, value, default, meaning in table:
        mark = "" if value == default else f"  (default {_shown(default)})"
        print(f"{key:<{width}}  {_shown(value)}{mark}\n{'':<{width}}  {meaning}" if meaning
              else f"{key:<{width}}  {_shown(value)}{mark}")
    if not args.all:
        print("\n`assistant config show --all` lists every learning setting.")
    return 0
