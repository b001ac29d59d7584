"""``fedistill generate``: sample text from a language-modelling run's teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from simulations.cli_common import console

generate_app = typer.Typer()


@generate_app.command()
def generate(
    run: Annotated[Path, typer.Argument(help="A `fedistill simulate` run directory (lm).")],
    prompt: Annotated[str, typer.Option(help="The text to continue.")] = "",
    samples: Annotated[int, typer.Option(help="How many continuations.", min=1)] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per sample, at most.",
                                                min=1)] = 200,
    temperature: Annotated[float, typer.Option(help="Softmax temperature, > 0.")] = 1.0,
    top_k: Annotated[int | None, typer.Option(help="Keep the k most likely tokens.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus: keep this much mass.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    weights: Annotated[str, typer.Option(help="The state dict in RUN to load.")] = "teacher.pt",
    quality: Annotated[bool, typer.Option(help="Print distinct-n, character entropy and "
                                          "the syntax-error rate (code) or spelling-error "
                                          "rate (prose) as JSON.")] = False,
) -> None:
    """Print text sampled from the run's teacher (or --weights teacher-round0.pt)."""
    from common.config import FedConfig, load_toml
    from simulations.generate import (
        CODE_DATASETS,
        load_run_model,
        sample_quality,
        sample_texts,
    )

    model = load_run_model(run, weights=weights)
    drawn = sample_texts(model, prompt, samples=samples, max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    for k, (text, finished) in enumerate(drawn):
        end = "" if finished else " …"
        console.rule(f"sample {k + 1}/{samples}" + ("" if finished else " (unfinished)"))
        console.print(text + end, markup=False, highlight=False)
    if quality:
        dataset = FedConfig.from_mapping(load_toml(run / "run_config.toml")).dataset
        scores = sample_quality(drawn, code=dataset in CODE_DATASETS)
        console.print_json(json.dumps(scores))
