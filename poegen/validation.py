"""The one check of user-given mappings (scene specs, batch jobs, sampler options): short errors that
name the place, the unknown or missing field, and what is allowed."""
from __future__ import annotations

from typing import Any, Dict, Iterable


def check_keys(d: Any, where: str, allowed: Iterable[str], required: Iterable[str] = ()) -> Dict:
    """``d`` itself when it is a mapping whose keys are all allowed and include every required one."""
    allowed = tuple(allowed)
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping with keys {', '.join(allowed)}, got {type(d).__name__}")
    unknown = sorted(_name_part(k) for k in set(d) - set(allowed))  # quote a little of what was parsed, not a file
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown[:5])}{more}; allowed: {', '.join(allowed)}")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {', '.join(missing)}")
    return d


def _name_part(key) -> str:
    """The start of an unknown key up to 24 name characters (letters, digits, _, -, space), then "...": a
    field name shows whole, a line of some other file (user:$6$salt$hash:...) shows no more than its first word."""
    import re

    text = str(key)
    head = re.match(r"[\w\- ]{0,24}", text).group()
    return head if head == text else head + "..."


def read_file(path, what: str):
    """The parsed content of a .json file, or else a YAML one (safe_load: no code runs); a missing file or a
    parse error (with its line) is a short error naming ``what`` and the path."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{what} file {path} is a folder; name a .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not content
        if path.suffix.lower() == ".json":
            return json.loads(text, object_pairs_hook=unique_keys)
        return load_yaml(text)
    except ValueError as e:  # json and yaml errors carry the line number
        raise ValueError(f"{path}: cannot parse: {' '.join(str(e).split())[:300]}") from None  # one line


def unique_keys(pairs):
    """A JSON object as a dict (``object_pairs_hook``), refusing a key given twice (json keeps the last silently)."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"key {_name_part(k)!r} appears twice in one mapping; merge them (the first would be "
                             "ignored)")
        d[k] = v
    return d


def load_yaml(text: str):
    """YAML without aliases (a few bytes of anchors can expand to gigabytes), without repeated keys (PyYAML keeps
    the last silently), and with YAML 1.2 numbers and booleans (1e308 and 1.0e6 are floats, where PyYAML's YAML 1.1
    reads strings; only true/false are booleans, so the relation `on` stays text); no code runs (SafeLoader)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise ValueError(f"line {key_node.start_mark.line + 1}: key {_name_part(key)!r} appears twice in "
                                     "one mapping; merge them (the first would be ignored)")
                seen.add(key)
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node):  # YAML 1.2: 010 is ten (1.1 read octal), 0o10 is eight
            value = self.construct_scalar(node).replace("_", "")
            sign, digits = (-1, value[1:]) if value[:1] == "-" else (1, value.lstrip("+"))
            base = {"0x": 16, "0o": 8}.get(digits[:2].lower(), 10)
            return sign * int(digits[2:] if base != 10 else digits, base)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    # YAML 1.2 integers: decimal, 0x hex, 0o octal (no 1.1 sexagesimal 1:30 or binary)
    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:int"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(
        r"^[-+]?[0-9][0-9_]*$|^0x[0-9a-fA-F]+$|^0o[0-7]+$"), list("-+0123456789"))
    # YAML 1.2 booleans: drop YAML 1.1's yes/no/on/off (a relation [0, on, 1] read as True)
    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in Loader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"), list("-+0123456789."))
    try:
        for event in yaml.parse(text, Loader=Loader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError(f"line {event.start_mark.line + 1}: aliases (*name) are not allowed; write the "
                                 "value out")
        return yaml.load(text, Loader=Loader)  # noqa: S506 (SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None
