"""Operator-written YAML files (response plans, drill scenarios) read into Pydantic models, refused
whole with every bad field named by its dotted path and its line.

``load_yaml_model(text, source, Model)`` is the one reader: it refuses a file that is not YAML, is
empty, or repeats a key (PyYAML would silently keep the last one, hiding an edit), then validates the
document against the model and maps each validation error back to the line of the deepest node of
its path that the file holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InvalidInput

__all__ = ["FileProblem", "YamlFileError", "load_yaml_model"]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class FileProblem:
    """One bad field of a file: its dotted path (``msel[2].at``), its line (1-based), what is wrong."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.path}: {self.message}"


class YamlFileError(InvalidInput):
    """A YAML file that cannot be accepted (422); names the file and each bad field with its line.

    The problem+json body carries ``source`` and ``problems`` (a list of {path, line, message})."""

    code, title = "invalid_file", "Invalid file"

    def __init__(self, source: str, problems: Sequence[FileProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(
            f"{source}: " + "; ".join(str(p) for p in self.problems),
            source=source,
            problems=[{"path": p.path, "line": p.line, "message": p.message} for p in self.problems],
        )


def format_path(loc: Sequence[int | str]) -> str:
    """A Pydantic error location as a dotted path with list indexes: ``msel[2].at``."""
    path = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(document)"


def line_of(root: yaml.Node, loc: Sequence[int | str]) -> int:
    """Line (1-based) of the deepest node of ``loc`` present in the file."""
    node = root
    line = node.start_mark.line + 1
    for part in loc:
        if part == "[key]":
            break
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    line = key_node.start_mark.line + 1
                    node = value_node
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


MAX_PROBLEMS = 50
"""The most problems named in one refusal (each is looked up in the file: a file of thousands of
bad keys is refused as fast as one with a few)."""

MAX_VALUES = 200_000
"""The most values a document may hold once its aliases are expanded: an alias may repeat a part
(response plans share their templates that way), but nested aliases that multiply a document into
billions of values ("billion laughs") are refused before anything walks them."""


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for with every alias expanded (memoised: linear in the file)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a node reached again while it is being sized: a recursive alias
    total = 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            total += _expanded_size(key, sizes) + _expanded_size(value, sizes)
            if total > MAX_VALUES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            total += _expanded_size(item, sizes)
            if total > MAX_VALUES:
                break
    sizes[id(node)] = total
    return total


def _duplicate_keys(node: yaml.Node, path: str, seen_nodes: set[int]) -> Iterator[FileProblem]:
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            child = f"{path}.{key_node.value}" if path else key_node.value
            if key_node.value in keys:
                yield FileProblem(child, key_node.start_mark.line + 1, "key appears twice")
            keys.add(key_node.value)
            yield from _duplicate_keys(value_node, child, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{path}[{i}]", seen_nodes)


Location = tuple[int | str, ...]
"""A field's place in a document: keys and list indexes, as Pydantic reports them."""


def load_yaml_model(
    text: str,
    source: str,
    model: type[M],
    error: type[YamlFileError] = YamlFileError,
    what: str = "file",
    check: Callable[[M], Iterable[tuple[Location, str]]] | None = None,
    locate: Callable[[Location], Location] | None = None,
) -> M:
    """``text`` (YAML) validated as ``model``, then by ``check`` (rules across fields: each problem
    a location and a message).

    Raises ``error`` (a YamlFileError, 422) naming ``source`` and every problem with its path and
    line: not YAML, an empty document (``the <what> is empty``), a key given twice, any field the
    model refuses, or what ``check`` finds. ``locate`` turns a validation error's location into
    the document's (e.g. drops the tag Pydantic adds for a discriminated union's member)."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # a character YAML refuses (U+0000) is refused here
        root = loader.get_single_node()
        if root is None:
            raise error(source, [FileProblem("(document)", 1, f"the {what} is empty")])
        duplicates = list(_duplicate_keys(root, "", set()))
        if duplicates:
            raise error(source, duplicates)
        if _expanded_size(root, {}) > MAX_VALUES:
            message = f"the {what} expands to more than {MAX_VALUES:,} values (anchors and aliases repeat them)"
            raise error(source, [FileProblem("(document)", 1, message)])
        data: Any = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = f"not valid YAML: {exc.problem}"
        if exc.context and exc.context_mark is not None:
            message += f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise error(source, [FileProblem("(document)", line, message)]) from None
    except yaml.YAMLError as exc:
        raise error(source, [FileProblem("(document)", 1, f"not valid YAML: {exc}")]) from None
    except RecursionError:
        raise error(source, [FileProblem("(document)", 1, "nested too deeply")]) from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer of more than 4,300 digits
        raise error(source, [FileProblem("(document)", 1, f"a value cannot be read: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()

    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        problems = []
        errors = exc.errors(include_url=False)
        for err in errors[:MAX_PROBLEMS]:
            loc = locate(tuple(err["loc"])) if locate else err["loc"]
            message = err["msg"].removeprefix("Value error, ")
            if loc and loc[-1] == "[key]":
                message = f"bad key: {message}"
            problems.append(FileProblem(format_path(loc), line_of(root, loc), message))
        if len(errors) > MAX_PROBLEMS:
            problems.append(FileProblem("(document)", 1, f"and {len(errors) - MAX_PROBLEMS} more problems"))
        raise error(source, problems) from None
    found = [
        FileProblem(format_path(loc), line_of(root, loc), message)
        for loc, message in itertools.islice((check or _none)(value), MAX_PROBLEMS)
    ]
    if found:
        raise error(source, found)
    return value


def _none(_: object) -> Iterable[tuple[Location, str]]:
    return ()
