"""Reading YAML for configs: safe (never executes code), strict about duplicate keys, and every
error names the file it came from."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from .checks import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping naming one key twice (plain YAML keeps the last one,
    so a config edited by hand would silently lose the first value)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges override on purpose
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (lines {seen[key]} and {line}); give each key once")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml_text(text: str, source: str = "config") -> Any:
    """Parse YAML ``text``; ``source`` (a file name, or "config") prefixes every error."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None


def read_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """The parsed contents of a YAML file, or a ConfigError saying what is wrong with the path."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(p)!r} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {str(p)!r} is a folder, not a YAML file; give the path of a .yaml file "
                          "(configs/*.yaml are the presets written out)")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} {str(p)!r} is not a regular file (a device, pipe or socket); "
                          "give the path of a .yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {e.strerror}") from None
    return load_yaml_text(text, f"{what} {str(p)!r}")
