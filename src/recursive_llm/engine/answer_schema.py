"""A typed answer's schema (`completion(..., schema=...)`, `rlm serve`'s `response_format`) and
checking an answer against it, without letting the schema or the answer stall or crash the host.

A schema may come from a stranger (any client of `rlm serve`) and an answer is whatever a model
wrote, so:

- a schema is bounded (`SchemaBounds`: objects and values, nesting, characters; its patterns'
  number, length and repetition counts) and checked once, when it is given: a schema past a bound,
  invalid, or with a reference that does not resolve inside it is a `ConfigError` (400 in `rlm
  serve`) that names the problem;
- references resolve only inside the schema: the `referencing.Registry` refuses to retrieve any
  URI, so nothing is ever fetched (no http:, no file:);
- patterns (`pattern`, `patternProperties`, and `additionalProperties` beside them) are matched with
  the `regex` module, under a timeout and without the GIL; jsonschema's own matching uses `re`,
  which can backtrack for minutes holding the GIL, so `unevaluatedProperties` (which matches
  `patternProperties` with `re`) is refused beside `patternProperties`;
- an answer is parsed with bounds (digits, nesting, finite numbers, no lone surrogates) and checked
  in a thread (`AnswerSchema.check`) under a deadline that every keyword looks at. An answer that
  cannot be parsed or checked, in time or at all, is an invalid answer the model is told about:
  never an exception out of the run.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from . import prompts
from ..errors import ConfigError
from ..models.base import has_lone_surrogate


@dataclass(frozen=True)
class SchemaBounds:
    """What a schema may hold and how long checking one answer may take."""

    max_nodes: int = 10_000  # objects, arrays and values, each counted once (check_schema: ~0.1 ms each)
    max_depth: int = 64  # nesting of objects and arrays
    max_chars: int = 500_000  # characters of its keys and strings
    max_patterns: int = 256
    max_pattern_chars: int = 1_000
    max_repetition: int = 10_000  # product of a pattern's {m,n} counts: `regex` expands them when compiling
    check_s: float = 2.0  # seconds to check one answer
    max_answer_depth: int = 64  # nesting of a typed answer's JSON


SCHEMA_BOUNDS = SchemaBounds()
MAX_ANSWER_DIGITS = 4_300  # Python's own limit on converting digits to an int (sys.get_int_max_str_digits)
_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # values there are data, not schemas
_REF_KEYWORDS = ("$ref", "$dynamicRef")
_COUNTS = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_JSON_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL | re.IGNORECASE)


class AnswerSchema:
    """What a typed answer must be: a pydantic model class, or a JSON schema (a dict)."""

    def __init__(self, schema: Any, bounds: SchemaBounds = SCHEMA_BOUNDS) -> None:
        self.bounds = bounds
        self.model: Any = None
        self._patterns: dict[str, Any] = {}
        if isinstance(schema, type) and hasattr(schema, "model_validate") and hasattr(schema, "model_json_schema"):
            self.model = schema
            self.json_schema: dict = schema.model_json_schema()
        elif isinstance(schema, dict):
            self.json_schema = schema
            try:
                self._validator_class, self._registry, self._patterns = _checked(schema, bounds)
            except ConfigError:
                raise
            except Exception as error:  # a stranger's schema is a 400 in `rlm serve`, whatever is wrong with it
                raise ConfigError(f"the schema cannot be used ({type(error).__name__}: {str(error)[:300]})") from None
        else:
            raise ConfigError("schema must be a pydantic model class or a JSON schema (a dict), got "
                              f"{type(schema).__name__}")
        self._note = prompts.SCHEMA_NOTE.format(schema=json.dumps(self.json_schema, indent=1)[:6_000])

    def prompt_note(self) -> str:
        return self._note

    async def check(self, answer: str) -> tuple[Any, str | None]:
        """`validate` in a thread: the event loop never waits on a schema's patterns or an answer's size."""
        grace = 5.0  # every keyword looks at the deadline; this only catches what none foresaw
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.validate, answer), self.bounds.check_s + grace)
        except TimeoutError:
            return None, _too_slow(self.bounds)

    def validate(self, answer: str) -> tuple[Any, str | None]:
        """`(the parsed value, None)` or `(None, the errors in words)`; never raises for an answer."""
        value, problem = parse_answer(answer, self.bounds.max_answer_depth)
        if problem is not None:
            return None, problem
        try:
            return self._validated(value)
        except _TooSlow:
            return None, _too_slow(self.bounds)
        except RecursionError:
            return None, "it is nested too deeply to check against the schema"
        except Exception as error:  # a model's answer must never crash the run, whatever it holds
            return None, f"it could not be checked against the schema ({type(error).__name__}: {str(error)[:300]})"

    def _validated(self, value: Any) -> tuple[Any, str | None]:
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(value), None
            except ValidationError as error:
                return None, "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}"
                                       for e in error.errors()[:10])
        from jsonschema import validators

        deadline = _Deadline(self.bounds.check_s)
        keywords = _bounded_keywords(self._validator_class, self._patterns, deadline)
        validator = validators.extend(self._validator_class, keywords)(self.json_schema, registry=self._registry)
        errors = []
        for error in validator.iter_errors(value):
            errors.append(error)
            if len(errors) == 10:
                break
        if errors:
            errors.sort(key=lambda e: [str(part) for part in e.path])
            return None, "; ".join(f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors)
        return value, None


# -- the schema, when it is given ---------------------------------------------------------------------
def _checked(schema: dict, bounds: SchemaBounds) -> tuple[Any, Any, dict[str, Any]]:
    """The schema's validator class, its registry (nothing retrieved) and its compiled patterns; a
    ConfigError naming the problem for a schema past a bound, invalid, or pointing outside itself."""
    import jsonschema
    import referencing

    _within_bounds(schema, bounds)
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise ConfigError(f"the schema is not a valid JSON schema: {error.message[:500]}") from None
    except (TypeError, ValueError, RecursionError) as error:
        raise ConfigError(f"the schema is not a valid JSON schema ({type(error).__name__}: {str(error)[:300]})") from None
    registry = referencing.Registry(retrieve=_refuse_retrieval)
    patterns, keywords = _walk_references(schema, registry)
    if "unevaluatedProperties" in keywords and "patternProperties" in keywords:
        raise ConfigError("the schema uses unevaluatedProperties together with patternProperties, which cannot be "
                          "checked in bounded time; use additionalProperties instead of unevaluatedProperties")
    return cls, registry, _compiled(patterns, bounds)


def _within_bounds(schema: dict, bounds: SchemaBounds) -> None:
    """Count objects, values, nesting and characters without recursion, stopping at the first bound passed."""
    nodes = chars = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > bounds.max_nodes:
            raise ConfigError(f"the schema has more than {bounds.max_nodes:,} objects and values, the limit")
        if isinstance(node, str):
            chars += len(node)
        elif isinstance(node, (dict, list)):
            if depth > bounds.max_depth:
                raise ConfigError(f"the schema is nested more than {bounds.max_depth} levels deep, the limit")
            if isinstance(node, dict):
                chars += sum(len(key) for key in node if isinstance(key, str))
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
        if chars > bounds.max_chars:
            raise ConfigError(f"the schema has more than {bounds.max_chars:,} characters of text, the limit")


def _refuse_retrieval(uri: str):
    raise LookupError(f"{uri} is not inside the schema, and nothing is fetched")


def _walk_references(schema: dict, registry: Any) -> tuple[set[str], set[str]]:
    """Resolve every `$ref` in the schema (inside its `$id` scopes; the registry retrieves nothing);
    collect its patterns and the keywords it uses."""
    import referencing.exceptions
    import referencing.jsonschema

    dialect = schema.get("$schema") if isinstance(schema.get("$schema"), str) else ""
    spec = referencing.jsonschema.specification_with(dialect, default=referencing.jsonschema.DRAFT202012)
    patterns: set[str] = set()
    keywords: set[str] = set()
    from jsonschema_specifications import REGISTRY as META_SCHEMAS

    known = META_SCHEMAS.combine(registry)  # as validation sees it (jsonschema adds the meta-schemas too)
    stack = [(schema, known.resolver_with_root(spec.create_resource(schema)))]
    while stack:
        node, resolver = stack.pop()
        if isinstance(node, list):
            stack.extend((item, resolver) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if node is not schema and isinstance(spec.id_of(node), str):
            resolver = resolver.in_subresource(spec.create_resource(node))
        keywords.update(key for key in node if isinstance(key, str))
        for keyword in _REF_KEYWORDS:
            if isinstance(node.get(keyword), str):
                try:
                    resolver.lookup(node[keyword])
                except referencing.exceptions.Unresolvable:
                    raise ConfigError(f"the schema's {keyword} {node[keyword][:200]!r} does not point inside the "
                                      f"schema; only references within it resolve (e.g. \"#/$defs/name\"), "
                                      f"nothing is fetched") from None
        patterns.update(_patterns_of(node))
        stack.extend((value, resolver) for key, value in node.items() if key not in _DATA_KEYWORDS)
    return patterns, keywords


def _patterns_of(node: dict) -> list[str]:
    found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
    if isinstance(node.get("patternProperties"), dict):
        found.extend(key for key in node["patternProperties"] if isinstance(key, str))
    return found


def _compiled(patterns: set[str], bounds: SchemaBounds) -> dict[str, Any]:
    import regex

    if len(patterns) > bounds.max_patterns:
        raise ConfigError(f"the schema has {len(patterns):,} patterns, over the limit of {bounds.max_patterns}")
    compiled = {}
    for pattern in patterns:
        if len(pattern) > bounds.max_pattern_chars:
            raise ConfigError(f"the schema has a pattern of {len(pattern):,} characters, over the limit of "
                              f"{bounds.max_pattern_chars:,}")
        repetition = math.prod(max(int(low), int(high or 0)) for low, high in _COUNTS.findall(pattern))
        if repetition > bounds.max_repetition:
            raise ConfigError(f"the schema's pattern {pattern[:100]!r} repeats {repetition:,} times in all (the "
                              f"product of its {{m,n}} counts), over the limit of {bounds.max_repetition:,}")
        try:
            compiled[pattern] = regex.compile(pattern)
        except (regex.error, OverflowError, RecursionError) as error:
            raise ConfigError(f"the schema's pattern {pattern[:100]!r} is not a regular expression ({error})") from None
    return compiled


# -- an answer ------------------------------------------------------------------------------------
def parse_answer(answer: str, max_depth: int = SCHEMA_BOUNDS.max_answer_depth) -> tuple[Any, str | None]:
    """The answer as data: JSON (a ```json fence around it is fine), or the Python literal that
    `FINAL_VAR` of a dict or list produces; `(None, why)` for anything else, never an exception."""
    text = answer.strip()
    fenced = _JSON_FENCE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None, f"it is not JSON ({error.msg} at line {error.lineno}, column {error.colno})"
    except RecursionError:
        return None, f"it is not usable JSON: it is nested more than {max_depth} levels deep"
    except ValueError as error:  # a number of too many digits, NaN, Infinity
        return None, f"it is not usable JSON: {str(error)[:200]}"
    return value, _shape_problem(value, max_depth)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_ANSWER_DIGITS:
        raise ValueError(f"a number of {len(text.lstrip('-')):,} digits, over the limit of {MAX_ANSWER_DIGITS:,}")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


def _shape_problem(value: Any, max_depth: int) -> str | None:
    """Why a parsed answer cannot be checked (too deep, a non-finite number, a lone surrogate), or None."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if has_lone_surrogate(node):
                return "it has a string with a lone surrogate (such as \\ud800), which is not Unicode text"
        elif isinstance(node, float) and not math.isfinite(node):
            return "it has a number that is not finite"
        elif isinstance(node, (dict, list, tuple, set, frozenset)):
            if depth >= max_depth:
                return f"it is nested more than {max_depth} levels deep, the limit"
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return None


# -- checking under a deadline ----------------------------------------------------------------------
class _TooSlow(Exception):
    """Checking an answer ran past its deadline."""


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise _TooSlow
        return left


def _too_slow(bounds: SchemaBounds) -> str:
    return (f"checking it against the schema took over {bounds.check_s:g} s (a pattern too slow to match, or too "
            f"much to check): give a smaller answer, or one whose strings match the schema's patterns plainly")


def _bounded_keywords(cls: Any, patterns: dict[str, Any], deadline: _Deadline) -> dict[str, Any]:
    """The validator's keywords, each looking at the deadline first; those that match patterns use
    the compiled `regex` patterns under the deadline, and `uniqueItems` takes linear time."""

    def search(pattern: str, text: str) -> bool:
        try:
            return patterns[pattern].search(text, timeout=deadline.left()) is not None
        except TimeoutError:
            raise _TooSlow from None

    def timed(keyword):
        def checked(validator, value, instance, schema):
            deadline.left()
            return keyword(validator, value, instance, schema) or ()
        return checked

    keywords = {name: timed(keyword) for name, keyword in cls.VALIDATORS.items()}
    replacements = {"pattern": _pattern(search), "patternProperties": _pattern_properties(search),
                    "additionalProperties": _additional_properties(search), "uniqueItems": _unique_items(deadline)}
    keywords.update({name: timed(keyword) for name, keyword in replacements.items() if name in cls.VALIDATORS})
    return keywords


def _pattern(search):
    def pattern(validator, pattern: str, instance, schema):
        from jsonschema.exceptions import ValidationError

        if validator.is_type(instance, "string") and not search(pattern, instance):
            yield ValidationError(f"{_short(instance)} does not match {pattern!r}")
    return pattern


def _pattern_properties(search):
    def pattern_properties(validator, value: dict, instance, schema):
        if not validator.is_type(instance, "object"):
            return
        for pattern, subschema in value.items():
            for key, item in instance.items():
                if search(pattern, key):
                    yield from validator.descend(item, subschema, path=key, schema_path=pattern)
    return pattern_properties


def _additional_properties(search):
    def additional_properties(validator, value, instance, schema):
        from jsonschema.exceptions import ValidationError

        if not validator.is_type(instance, "object"):
            return
        known, patterns = schema.get("properties", {}), list(schema.get("patternProperties", {}))
        extras = [key for key in instance if key not in known and not any(search(p, key) for p in patterns)]
        if validator.is_type(value, "object"):
            for extra in extras:
                yield from validator.descend(instance[extra], value, path=extra)
        elif not value and extras:
            names = ", ".join(_short(extra) for extra in sorted(extras)[:20])
            yield ValidationError(f"additional properties are not allowed ({names} {'was' if len(extras) == 1 else 'were'}"
                                  f" unexpected)")
    return additional_properties


def _unique_items(deadline: _Deadline):
    def unique_items(validator, unique, instance, schema):
        from jsonschema.exceptions import ValidationError

        if not unique or not validator.is_type(instance, "array"):
            return
        seen: set = set()
        for item in instance:
            deadline.left()
            key = _equality_key(item)
            if key in seen:
                yield ValidationError(f"{_short(item)} appears more than once: the items must be unique")
                return
            seen.add(key)
    return unique_items


def _equality_key(value: Any) -> Any:
    """A hashable key equal for JSON-equal values (1 == 1.0, key order ignored, true != 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, dict):
        return ("object", frozenset((key, _equality_key(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_equality_key(item) for item in value))
    return ("value", value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"
