"""The recipe (run spec): schema and loader."""

from ftx.core.recipe.loader import LoadedRecipe, load_recipe, recipe_digest, validate_recipe
from ftx.core.recipe.schema import Recipe

__all__ = ["LoadedRecipe", "Recipe", "load_recipe", "recipe_digest", "validate_recipe"]
