"""The strawberry schema with its bounded parser/validation caches and error codes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import ParserCache, ValidationCache

from schema.access import SubscriptionsOverWebsockets
from schema.compiled import CompiledReadsExecutionContext
from schema.errors import ErrorCodes
from schema.execution import PlainLeavesExecutionContext
from schema.limits import Limits
from schema.operations import OperationMetrics
from schema.resolvers import Mutation, Query, Subscription

# Distinct query texts a deployment sends are few (consoles, scripts); the bound keeps a client
# that sends endless unique texts from growing memory.
CACHE_SIZE = 512


class QueryParserCache(ParserCache):
    """strawberry's bounded parser cache, except that a document that does not parse is left to
    strawberry's own parse: raised from this hook, the syntax error would bypass the operation's
    extensions (no error code) and its result handling."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        yield


class CheckMateSchema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        # ErrorCodes logs what is unexpected, with the request id; user errors are not logged.
        return


def build_schema(
    *, fast_leaves: bool = True, limits: Limits | None = None, compiled_reads: bool = True
) -> CheckMateSchema:
    """fast_leaves=False: graphql-core's own completion of every field (tests compare);
    limits: what one document may cost (the defaults when not given); compiled_reads=False:
    no read answered by SQL-built JSON (schema.compiled; tests compare)."""
    context_class: Any = None
    if fast_leaves:
        context_class = (
            CompiledReadsExecutionContext if compiled_reads else PlainLeavesExecutionContext
        )
    return CheckMateSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        execution_context_class=context_class,
        extensions=[
            OperationMetrics,
            # The token limit is a parse option: it must be set before the (cached) parse.
            *(limits or Limits()).extensions(),
            lambda: QueryParserCache(maxsize=CACHE_SIZE),
            lambda: ValidationCache(maxsize=CACHE_SIZE),
            ErrorCodes,
            SubscriptionsOverWebsockets,
        ],
    )


schema = build_schema()
