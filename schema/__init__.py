"""The GraphQL layer: strawberry types, thin resolvers over CheckMateService, dataloaders."""

from schema.build import build_schema, schema

__all__ = ["build_schema", "schema"]
