"""``reprlab train|pretrain|distill|compress NAME``: one subcommand per registered recipe, built from its config.

Nothing here knows a recipe: each subcommand's options come from the recipe's config class by
:func:`reprlab.cli.options.add_config_options`, and its handler builds the config, runs the recipe,
logs the result's one-line summary and prints its report (if any) on standard output.
"""

from __future__ import annotations

import logging

from reprlab.cli.options import add_config_options, config_from_args
from reprlab.io import check_output

logger = logging.getLogger("reprlab")

GROUP_HELP = {
    "train": "training recipes (retrieval, multi-hop, readers)",
    "pretrain": "masked-language-model pre-training recipes",
    "distill": "distil a text encoder into a smaller student on unlabelled text",
    "compress": "compress a fine-tuned model",
}


def add_commands(sub) -> None:
    from reprlab.recipes import groups

    for group, recipes in groups().items():
        group_parser = sub.add_parser(group, help=GROUP_HELP.get(group, f"{group} recipes"))
        names = group_parser.add_subparsers(dest="recipe", required=True, parser_class=type(group_parser))
        for recipe in recipes:
            p = names.add_parser(recipe.name, help=recipe.help, description=recipe.help)
            options = add_config_options(p, recipe.config, hidden=recipe.hidden, fixed=recipe.fixed)
            p.set_defaults(func=run_recipe, recipe_entry=recipe, options=options)


def run_recipe(args) -> None:
    recipe, options = args.recipe_entry, args.options
    config = config_from_args(options, args)
    check_output(config.output_dir, "folder")
    result = recipe.run(config)
    logger.info(f"{recipe.command}: {result.summary()}")
    report = result.report()
    if report:
        print(report)
