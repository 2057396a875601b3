"""The small GraphQL the fake RunPod (runpod.py) speaks: one operation per document, fields with
aliases, arguments and selection sets; values may be variables or literals. Fragments and
directives are refused. Documents are checked against a schema and answers carry only the
fields asked for, under their aliases.

Named `graphql_lite`, not `graphql`, so that it can never shadow the graphql-core package.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# type -> field -> the field's object type (None for scalars)
Schema = dict[str, dict[str, str | None]]

_TOKEN = re.compile(
    r"""\s+|,|\#[^\n]*
    |(?P<punct>\.\.\.|[{}()\[\]:!$=@])
    |(?P<string>"(?:[^"\\\n]|\\.)*")
    |(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    |(?P<name>[_A-Za-z][_0-9A-Za-z]*)""",
    re.X,
)


class GraphQLError(Exception):
    """A resolver error: answered with HTTP 200 as {"errors": [...], "data": null}."""


class DocumentError(Exception):
    """A document that does not parse, or asks for what the schema lacks (HTTP 400)."""


@dataclass
class Field:
    name: str
    alias: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    selections: list["Field"] | None = None

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass(frozen=True)
class _Variable:
    name: str


@dataclass(frozen=True)
class _EnumValue:
    name: str


def parse(document: str) -> tuple[str, list[Field]]:
    """The document's operation type ("query" or "mutation") and its root fields."""
    return _Parser(document).operation()


def validate(selections: list[Field], type_name: str, schema: Schema) -> None:
    for selected in selections:
        if selected.name == "__typename":
            continue
        fields = schema[type_name]
        if selected.name not in fields:
            raise DocumentError(f'Cannot query field "{selected.name}" on type "{type_name}".')
        subtype = fields[selected.name]
        if subtype and not selected.selections:
            message = f'Field "{selected.name}" of type "{subtype}" must have a selection.'
            raise DocumentError(message)
        if not subtype and selected.selections:
            raise DocumentError(f'Field "{selected.name}" must not have a selection.')
        if subtype:
            validate(selected.selections, subtype, schema)


def arguments(selected: Field, variables: dict[str, Any]) -> dict[str, Any]:
    """The field's arguments with their variables filled in."""
    return {name: _evaluate(value, variables) for name, value in selected.args.items()}


def execute(
    selections: list[Field],
    variables: dict[str, Any],
    root: str,
    schema: Schema,
    resolve: Callable[[Field, dict[str, Any]], Any],
) -> dict:
    """The answer to a validated operation: the first resolver error ends it with no data."""
    data = {}
    for selected in selections:
        try:
            value = resolve(selected, variables)
        except GraphQLError as error:
            return {"errors": [{"message": str(error), "path": [selected.key]}], "data": None}
        subtype = schema[root][selected.name]
        data[selected.key] = _project(value, selected.selections, subtype, schema)
    return {"data": data}


def _evaluate(value: Any, variables: dict[str, Any]) -> Any:
    """A parsed literal with its variables filled in; enums become their names."""
    if isinstance(value, _Variable):
        if value.name not in variables:
            raise GraphQLError(f'Variable "${value.name}" of required type was not provided.')
        return variables[value.name]
    if isinstance(value, _EnumValue):
        return value.name
    if isinstance(value, list):
        return [_evaluate(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: _evaluate(v, variables) for k, v in value.items()}
    return value


def _project(
    value: Any, selections: list[Field] | None, type_name: str | None, schema: Schema
) -> Any:
    """Only the fields the query selected, under their aliases, as GraphQL answers."""
    if value is None or selections is None:
        return value
    if isinstance(value, list):
        return [_project(item, selections, type_name, schema) for item in value]
    projected = {}
    for selected in selections:
        if selected.name == "__typename":
            projected[selected.key] = type_name
            continue
        subtype = schema[type_name][selected.name]
        projected[selected.key] = _project(
            value.get(selected.name), selected.selections, subtype, schema
        )
    return projected


def _tokenize(document: str) -> list[tuple[str, Any]]:
    tokens, pos = [], 0
    while pos < len(document):
        match = _TOKEN.match(document, pos)
        if not match:
            raise DocumentError(f"Syntax Error: Unexpected character {document[pos]!r}")
        pos = match.end()
        kind = match.lastgroup
        if kind == "string":
            tokens.append(("value", json.loads(match.group(kind))))
        elif kind == "number":
            text = match.group(kind)
            tokens.append(("value", float(text) if re.search(r"[.eE]", text) else int(text)))
        elif kind:
            tokens.append((kind, match.group(kind)))
    return tokens


class _Parser:
    def __init__(self, document: str):
        self.tokens = _tokenize(document)
        self.pos = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, Any]:
        token = self.peek()
        if token is None or (expected is not None and token[1] != expected):
            found = "<EOF>" if token is None else repr(token[1])
            raise DocumentError(f"Syntax Error: Expected {expected or 'a token'}, found {found}")
        self.pos += 1
        return token

    def name(self) -> str:
        kind, text = self.take()
        if kind != "name":
            raise DocumentError(f"Syntax Error: Expected Name, found {text!r}")
        return text

    def operation(self) -> tuple[str, list[Field]]:
        op_type = "query"
        if self.peek() and self.peek()[0] == "name":
            op_type = self.name()
            if op_type not in ("query", "mutation"):
                raise DocumentError(f"Syntax Error: Unexpected Name {op_type!r}")
            if self.peek() and self.peek()[0] == "name":
                self.name()  # the operation's name
            if self.peek() == ("punct", "("):
                self.skip_balanced("(", ")")  # variable definitions: values come as given
        selections = self.selection_set()
        if self.peek() is not None:
            raise DocumentError("This fake answers one operation per document")
        return op_type, selections

    def skip_balanced(self, opening: str, closing: str) -> None:
        depth = 0
        while True:
            _, text = self.take()
            depth += (text == opening) - (text == closing)
            if depth == 0:
                return

    def selection_set(self) -> list[Field]:
        self.take("{")
        fields = []
        while self.peek() != ("punct", "}"):
            fields.append(self.field())
        self.take("}")
        if not fields:
            raise DocumentError("Syntax Error: Expected Name, found '}'")
        return fields

    def field(self) -> Field:
        if self.peek() in (("punct", "..."), ("punct", "@")):
            raise DocumentError("This fake does not support fragments or directives")
        name, alias = self.name(), None
        if self.peek() == ("punct", ":"):
            self.take(":")
            name, alias = self.name(), name
        found = Field(name=name, alias=alias)
        if self.peek() == ("punct", "("):
            self.take("(")
            while self.peek() != ("punct", ")"):
                arg = self.name()
                self.take(":")
                found.args[arg] = self.value()
            self.take(")")
        if self.peek() == ("punct", "{"):
            found.selections = self.selection_set()
        return found

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "value":
            return text
        if text == "$":
            return _Variable(self.name())
        if text == "[":
            items = []
            while self.peek() != ("punct", "]"):
                items.append(self.value())
            self.take("]")
            return items
        if text == "{":
            fields = {}
            while self.peek() != ("punct", "}"):
                key = self.name()
                self.take(":")
                fields[key] = self.value()
            self.take("}")
            return fields
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(text, _EnumValue(text))
        raise DocumentError(f"Syntax Error: Unexpected {text!r}")
