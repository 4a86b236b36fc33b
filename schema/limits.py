"""What one GraphQL document may cost, decided while it is parsed and validated (before any
database work): depth, aliases and lexical tokens (strawberry's own limiters), introspection
that can be turned off, and BAD_USER_INPUT for input values their type rejects (maxResults
beyond Int included).

strawberry's limiters report plain validation errors; each rule here is wrapped so that its
errors carry their own `extensions.code`. The wrapping relies on graphql-core's ValidationRule
reporting through `report_error`/`context.on_error` (graphql-core 3.2-3.3, tested in
tests/test_limits.py) and on strawberry reading `execution_context.validation_rules`
(strawberry 0.340+).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import ASTValidationRule, GraphQLError, ValidationContext
from graphql.validation import ValuesOfCorrectTypeRule
from strawberry.extensions import (
    AddValidationRules,
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)

from checkmate.service import ServiceError
from checkmate.settings import Settings

QUERY_TOO_COMPLEX = "QUERY_TOO_COMPLEX"
BAD_USER_INPUT = ServiceError.BAD_USER_INPUT
# graphql-core's parser message when max_tokens is exceeded (graphql.language.parser).
TOKEN_LIMIT_MESSAGE = "Document contains more than"


def with_code(error: GraphQLError, code: str) -> GraphQLError:
    error.extensions = {**(error.extensions or {}), "code": code}
    return error


def coded_rule(rule: type[ASTValidationRule], code: str) -> type[ASTValidationRule]:
    """The rule, its errors carrying `code` (whether it reports while built or while visiting)."""

    class Coded(rule):  # type: ignore[valid-type,misc]
        def __init__(self, context: ValidationContext) -> None:
            # strawberry's limiters inspect the whole document (and report) in __init__.
            report = context.on_error
            if report is not None:
                context.on_error = lambda error: report(with_code(error, code))  # type: ignore[method-assign]
            try:
                super().__init__(context)
            finally:
                context.on_error = report  # type: ignore[method-assign]

        def report_error(self, error: GraphQLError) -> None:
            super().report_error(with_code(error, code))

    Coded.__name__ = f"Coded{rule.__name__}"
    return Coded


class ValidationLimits(SchemaExtension):
    """Adds the limit rules (built once per schema) to each operation's validation, and codes
    the errors of ValuesOfCorrectTypeRule: a literal its input type rejects (an Int beyond 32
    bits, a bad enum value) is the client's input to fix, BAD_USER_INPUT, like the same value
    passed in a variable."""

    def __init__(self, rules: tuple[type[ASTValidationRule], ...]) -> None:
        self.rules = rules

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.validation_rules = (
            *(
                _CODED_VALUES_RULE if rule is ValuesOfCorrectTypeRule else rule
                for rule in context.validation_rules
            ),
            *self.rules,
        )
        yield


_CODED_VALUES_RULE = coded_rule(ValuesOfCorrectTypeRule, BAD_USER_INPUT)


@dataclass(frozen=True)
class Limits:
    max_depth: int = 10
    max_aliases: int = 30
    max_tokens: int = 5_000
    introspection: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_depth=settings.max_query_depth,
            max_aliases=settings.max_aliases,
            max_tokens=settings.max_query_tokens,
            introspection=settings.introspection,
        )

    def extensions(self) -> list[Any]:
        """Factories of the schema's limit extensions (one fresh extension per operation)."""
        # strawberry's limiters, built once here for their validation rules only.
        limiters: list[AddValidationRules] = [
            QueryDepthLimiter(max_depth=self.max_depth),
            MaxAliasesLimiter(max_alias_count=self.max_aliases),
        ]
        rules = tuple(
            coded_rule(rule, QUERY_TOO_COMPLEX)
            for limiter in limiters
            for rule in limiter.validation_rules
        )
        if not self.introspection:
            rules += tuple(DisableIntrospection().validation_rules)
        max_tokens = self.max_tokens
        return [
            lambda: MaxTokensLimiter(max_token_count=max_tokens),
            lambda: ValidationLimits(rules),
        ]


def is_token_limit(error: GraphQLError) -> bool:
    return TOKEN_LIMIT_MESSAGE in error.message
