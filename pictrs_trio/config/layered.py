"""Layered configuration over a tree of msgspec Structs; knows nothing of pict-rs.

Each source (file, environment, command line) becomes a ``Layer``: a nested dict plus where it
came from. ``config.load`` merges the layers and converts once; the helpers here turn
msgspec's validation messages back into "which key, from where, what is wrong".
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path

import msgspec

Tree = dict[str, object]
KeyPath = tuple[str | int, ...]
MISSING = object()


class ConfigError(Exception):
    """The configuration is unusable; the message names the key, where it came from and why."""


class Layer(msgspec.Struct, frozen=True, kw_only=True):
    data: Tree
    source: str  # "file pictrs.toml", "command line", ...
    env_prefix: str | None = None  # environment layers name the variable of each key

    def describe(self, path: KeyPath) -> str:
        if self.env_prefix is None:
            return self.source
        return "environment variable " + env_name(self.env_prefix, path)


def env_name(prefix: str, path: KeyPath) -> str:
    """The environment variable of a key path: ``PICTRS__MEDIA__IMAGE__MAX_WIDTH``."""
    return prefix + "__".join(str(part).upper() for part in path)


def read_file(path: Path) -> Tree:
    """Parse a TOML (or, by its extension, JSON) file into a dict. Raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"config file {path}: invalid JSON at line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: the top level must be an object")
        return data
    if suffix in {".yaml", ".yml", ".ron", ".ini", ".json5", ".hjson"}:
        raise ConfigError(f"config file {path}: {suffix} is not supported; use TOML or JSON")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def env_layer(
    env: Mapping[str, str], prefix: str, list_keys: frozenset[tuple[str, ...]]
) -> Layer | None:
    """The variables named ``<prefix><SECTION>__<KEY>`` as a layer (None if there are none).

    Names are case-insensitive after the prefix; ``__`` separates levels. Values stay strings:
    the conversion (``strict=False``) parses them by the key's type. ``list_keys`` take a
    comma-separated list.
    """
    data: Tree = {}
    for name in sorted(env):  # sorted: deterministic if two spellings collide
        if not name.upper().startswith(prefix):
            continue
        parts = tuple(name[len(prefix) :].lower().split("__"))
        if not all(parts):
            raise ConfigError(f"environment variable {name}: empty key between '__' separators")
        value: object = env[name]
        if parts in list_keys:
            value = [item.strip() for item in env[name].split(",") if item.strip()]
        set_path(data, parts, value, what=f"environment variable {name}")
    return Layer(data=data, source="environment", env_prefix=prefix) if data else None


def nest(flat: Mapping[str, object]) -> Tree:
    """``{"media.image.max_width": 5}`` -> ``{"media": {"image": {"max_width": 5}}}``."""
    out: Tree = {}
    for key, value in flat.items():
        set_path(out, tuple(key.split(".")), value, what=key)
    return out


def set_path(tree: Tree, path: tuple[str, ...], value: object, *, what: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what}: {'.'.join(path)} is inside a key that is not a section")
        node = child
    if isinstance(node.get(path[-1]), dict):
        raise ConfigError(f"{what}: {'.'.join(path)} is a section, not a key")
    node[path[-1]] = value


def merge(
    base: Tree,
    layer: Mapping[str, object],
    tagged: Mapping[str, str],
    variant_keys: Mapping[tuple[str, object], frozenset[str]] | None = None,
) -> None:
    """Deep-merge ``layer`` into ``base``. ``tagged`` maps top-level tagged sections to their
    default ``type``: a layer switching the type replaces the section, since the keys of the
    other variant would be unknown keys; only keys the new variant has too are carried over
    (``variant_keys``: (section, type) -> its keys), as pict-rs's merge keeps them: an
    environment's ``PICTRS__STORE__PUBLIC_ENDPOINT`` with ``run object-storage …``."""
    for key, value in layer.items():
        current = base.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            if (
                key in tagged
                and "type" in value
                and value["type"] != current.get("type", tagged[key])
            ):
                replaced = typing.cast(Tree, _copy(value))
                known = (variant_keys or {}).get((key, value["type"]), frozenset())
                for name, old in current.items():
                    if name != "type" and name in known and name not in replaced:
                        replaced[name] = _copy(old)
                base[key] = replaced
            else:
                merge(current, value, {})
        else:
            base[key] = _copy(value)


def _copy(value: object) -> object:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def get(tree: object, path: KeyPath) -> object:
    """The value at ``path``, or MISSING."""
    for part in path:
        # two branches, not one `or`: mypy narrows `part` to str or int for each index
        if isinstance(tree, dict) and isinstance(part, str) and part in tree:  # noqa: SIM114
            tree = tree[part]
        elif isinstance(tree, list) and isinstance(part, int) and part < len(tree):
            tree = tree[part]
        else:
            return MISSING
    return tree


def remove(tree: Tree, path: tuple[str, ...]) -> None:
    """Delete the key at ``path`` if present, and the sections it leaves empty."""
    if not path:
        return
    node = tree.get(path[0])
    if len(path) == 1:
        tree.pop(path[0], None)
    elif isinstance(node, dict):
        remove(node, path[1:])
        if not node:
            del tree[path[0]]


def strip_unknown(
    tree: Tree, root: type[msgspec.Struct], layers: list[Layer], path: KeyPath = ()
) -> list[str]:
    """Take every key the Struct tree does not have out of ``tree`` (merged, tagged sections'
    ``type`` filled in); one message per leaf taken, naming its source and a close known key.
    Values of the wrong shape for a known key stay, for the conversion to report."""
    structs: tuple[type[msgspec.Struct], ...] = (root,)
    return _strip(tree, structs, layers, path)


def _strip(
    tree: Tree, structs: tuple[type[msgspec.Struct], ...], layers: list[Layer], path: KeyPath
) -> list[str]:
    if len(structs) > 1:  # a tagged union: the variant ``type`` names
        structs = tuple(s for s in structs if s.__struct_config__.tag == tree.get("type"))
        if len(structs) != 1:
            return []  # an unknown type: the conversion reports it
    (struct,) = structs
    hints = typing.get_type_hints(struct)
    tagged = struct.__struct_config__.tag_field
    messages = []
    for key in list(tree):
        value = tree[key]
        here = (*path, key)
        if key == tagged:
            continue
        if key not in hints:
            del tree[key]
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f"; did you mean {dotted((*path, close[0]))}?" if close else ""
            if not close and tagged and path:
                hint = f' for a {dotted(path)} of type "{tree.get(tagged)}"'

            for tail in leaves(value) or [()]:
                leaf = (*here, *tail)
                messages.append(
                    f"{dotted(leaf)} ({source(layers, leaf)}): unknown key, ignored{hint}"
                )
            continue
        children = structs_in(hints[key])
        if children and isinstance(value, dict):
            messages += _strip(value, children, layers, here)
    return messages


def dotted(path: KeyPath) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def source(layers: list[Layer], path: KeyPath) -> str:
    """Where the effective value at ``path`` came from."""
    for layer in reversed(layers):
        if get(layer.data, path) is not MISSING:
            return layer.describe(path)
    return "default"


def leaves(value: object) -> list[tuple[str, ...]]:
    """Relative paths of the leaves under ``value`` (``[()]`` for a leaf, ``[]`` if MISSING)."""
    if value is MISSING:
        return []
    if isinstance(value, dict):
        return [(k, *tail) for k, v in value.items() for tail in leaves(v)]
    return [()]


_MSGSPEC_ERROR = re.compile(r"(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def explain(
    message: str,
    root: type[msgspec.Struct],
    merged: Tree,
    layers: list[Layer],
    env_prefix: str,
    shown: Callable[[str, object], str] = lambda _, value: repr(value),
) -> ConfigError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.media.image.max_width`" into a
    message naming the key, its value (as ``shown(dotted key, value)`` writes it: the caller
    hides secrets) and the layer it came from."""
    match = _MSGSPEC_ERROR.fullmatch(message)
    assert match is not None  # the pattern matches any string
    msg = match["msg"]
    path: KeyPath = tuple(
        name if name else int(index) for name, index in _PATH_PART.findall(match["path"] or "")
    )
    if field := re.fullmatch(r"Object contains unknown field `(.+)`", msg):
        path = (*path, field[1])
        problem = "unknown key"
        known = fields_at(root, path[:-1], merged)
        if close := difflib.get_close_matches(field[1], known, n=1):
            problem += f"; did you mean {dotted((*path[:-1], close[0]))}?"
        elif len(path) == 2 and isinstance(kind := get(merged, (path[0], "type")), str):
            problem += f' for a {path[0]} of type "{kind}"'
        return ConfigError(f"{dotted(path)} ({source(layers, path)}): {problem}")
    if field := re.fullmatch(r"Object missing required field `(.+)`", msg):
        path = (*path, field[1])
        return ConfigError(
            f"{dotted(path)}: required key is missing; set it in the config file, with "
            f"{env_name(env_prefix, path)} or with a command-line flag"
        )
    problem = re.sub(r" \| null", "", msg.replace("`", ""))
    problem = problem[:1].lower() + problem[1:]
    if problem.startswith("invalid enum value"):
        choices = typing.get_args(leaf_type(root, ".".join(map(str, path))))
        problem += "; expected one of " + ", ".join(map(repr, choices))
    value = get(merged, path)
    key = dotted(path)
    value_part = "" if value is MISSING or isinstance(value, dict) else f" = {shown(key, value)}"
    return ConfigError(f"{key or 'config'}{value_part} ({source(layers, path)}): {problem}")


def leaf_keys(root: type[msgspec.Struct]) -> list[str]:
    """Every key of the tree, dotted (``media.image.quality.jpeg``); a tagged union lists
    ``type`` and the keys of all its variants."""
    keys: list[str] = []

    def walk(prefix: str, structs: tuple[type[msgspec.Struct], ...]) -> None:
        seen: dict[str, list[object]] = {}
        for struct in structs:
            for name, hint in typing.get_type_hints(struct).items():
                seen.setdefault(name, []).append(hint)
        if any(s.__struct_config__.tag_field for s in structs):
            keys.append(f"{prefix}type")
        for name, hints in seen.items():
            children = tuple(s for h in hints for s in structs_in(h))
            if children:
                walk(f"{prefix}{name}.", children)
            else:
                keys.append(f"{prefix}{name}")

    walk("", (root,))
    return keys


def leaf_type(root: type[msgspec.Struct], key: str) -> object:
    """The type of a leaf key without ``None`` and constraints: ``int``, ``Literal[...]``,
    ``list[str]``. Raises KeyError."""
    structs: tuple[type[msgspec.Struct], ...] = (root,)
    hint: object = MISSING
    for part in key.split("."):
        hint = next((h[part] for h in map(typing.get_type_hints, structs) if part in h), MISSING)
        if hint is MISSING:
            raise KeyError(key)
        structs = structs_in(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_union(hint) and len(args) == 1:
        return args[0]
    return hint


def _is_union(hint: object) -> bool:
    return typing.get_origin(hint) in {typing.Union, types.UnionType}


def structs_in(hint: object) -> tuple[type[msgspec.Struct], ...]:
    """The Struct types a type hint allows (several for a tagged union)."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return tuple(o for o in options if isinstance(o, type) and issubclass(o, msgspec.Struct))


def fields_at(root: type[msgspec.Struct], path: KeyPath, merged: Tree) -> list[str]:
    """Field names of the section at ``path`` (for "did you mean"); in a tagged union, those
    of the variant the merged ``type`` picks."""
    structs: tuple[type[msgspec.Struct], ...] = (root,)
    for depth, part in enumerate(path):
        hints = [typing.get_type_hints(s) for s in structs]
        structs = structs_in(next((h[part] for h in hints if part in h), None))
        if len(structs) > 1:
            kind = get(merged, (*path[: depth + 1], "type"))
            structs = tuple(s for s in structs if s.__struct_config__.tag == kind)
        if not structs:
            return []
    return [name for s in structs for name in s.__struct_fields__]
