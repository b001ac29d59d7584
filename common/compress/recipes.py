"""Recipes: steps that compose, applied to a run's teacher, each measured side by side.

A recipe is steps joined by ``+``, applied left to right to a copy of the teacher:
``student=3+vocab+int8+int8emb`` distils a 3-layer student, prunes its vocabulary, then
quantizes its Linear layers and embeddings. ``fp32`` (no step) is the teacher itself.
Steps that train or prune come before the quantizing ones (a quantized model cannot be
trained or pruned); a recipe that breaks this is refused before anything runs. Prefixes
that trained a student are kept, so recipes sharing one train it once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from common.compress.lowrank import low_rank
from common.compress.measure import LatencySettings, measure
from common.compress.prune import magnitude_prune, prune_ffn, prune_heads, sparsity
from common.compress.quantize import half, int8_embeddings, int8_linear
from common.compress.student import (
    Distilled,
    DistilSettings,
    distil_pretrained,
    distil_scratch,
    prune_vocabulary,
    scratch_student,
    trim_positions,
    truncated_encoder,
    unknown_share,
)
from common.compress.subject import Subject
from common.compress.text_model import ProbeOnEncoder
from common.errors import ConfigError

# which steps take a value, and which are "final" (quantizing: nothing may follow but
# other final steps)
VALUED = ("magnitude", "heads", "ffn", "lowrank", "rank", "student")
PLAIN = ("int8", "int8emb", "vocab", "positions", "fp16", "bf16")
FINAL = ("int8", "int8emb", "fp16", "bf16")
PRETRAINED_ONLY = ("vocab", "positions", "int8emb")

PRETRAINED_RECIPES = ("fp32", "int8", "int8+int8emb", "magnitude=0.5", "heads=0.25+ffn=0.25",
                      "heads=0.25+ffn=0.25+student=6", "lowrank=0.9", "vocab+positions",
                      "vocab+positions+int8+int8emb",
                      "student=3+vocab+positions",
                      "student=3+vocab+positions+int8+int8emb",
                      "student=2+vocab+positions+int8+int8emb",
                      "student=1+vocab+positions+int8+int8emb")
SCRATCH_RECIPES = ("fp32", "int8", "magnitude=0.5", "heads=0.5+ffn=0.5", "lowrank=0.9",
                   "student=1", "student=1+int8")


@dataclass(frozen=True)
class CompressConfig:
    """The recipes to run and how to measure and train them."""

    recipes: tuple[str, ...] = ()  # empty = the defaults for the model's kind
    latency: LatencySettings = field(default_factory=LatencySettings)
    distil: DistilSettings = field(default_factory=DistilSettings)
    test_limit: int = 0  # measure on the first N test texts only (0 = all)


def default_recipes(kind: str) -> tuple[str, ...]:
    return PRETRAINED_RECIPES if kind == "pretrained" else SCRATCH_RECIPES


def parse_recipe(recipe: str, kind: str) -> list[tuple[str, float | None]]:
    """``"student=3+int8"`` -> ``[("student", 3.0), ("int8", None)]``, checked."""
    steps: list[tuple[str, float | None]] = []
    for part in [] if recipe.strip() == "fp32" else recipe.split("+"):
        name, _, value = part.strip().partition("=")
        if name not in VALUED + PLAIN:
            raise ConfigError(f"recipe {recipe!r}: unknown step {name!r}; steps are "
                              f"{', '.join(VALUED + PLAIN)} (or fp32 alone).")
        if (name in VALUED) != bool(value):
            raise ConfigError(f"recipe {recipe!r}: step {name!r} "
                              + ("needs a value (name=value)." if name in VALUED
                                 else "takes no value."))
        if kind != "pretrained" and name in PRETRAINED_ONLY:
            raise ConfigError(f"recipe {recipe!r}: {name} acts on a pretrained encoder's "
                              f"vocabulary; this teacher is a from-scratch {kind}.")
        if steps and steps[-1][0] in FINAL and name not in FINAL:
            raise ConfigError(f"recipe {recipe!r}: {name} cannot follow the quantizing step "
                              f"{steps[-1][0]}; put it first.")
        steps.append((name, float(value) if value else None))
    return steps


def _apply(subject: Subject, model: nn.Module, step: tuple[str, float | None],
           settings: DistilSettings, notes: list[str]) -> nn.Module:
    name, value = step
    simple: dict[str, Callable[[], nn.Module]] = {
        "int8": lambda: int8_linear(model),
        "int8emb": lambda: int8_embeddings(model),
        "fp16": lambda: half(model, "fp16"),
        "bf16": lambda: half(model, "bf16"),
        "heads": lambda: prune_heads(model, value),
        "ffn": lambda: prune_ffn(model, value),
        "lowrank": lambda: low_rank(model, energy=value),
        "rank": lambda: low_rank(model, rank=int(value)),
        "positions": lambda: trim_positions(model, subject.model.tokenize.max_len),
    }
    if name in simple:
        return simple[name]()
    if name == "magnitude":
        magnitude_prune(model, value)
        notes.append(f"{sparsity(model):.0%} of Linear weights are zero, stored densely")
        return model
    if name == "vocab":
        return _vocab(subject, model, notes)
    distilled = _student(subject, model, int(value), settings)
    notes.append(distilled.note())
    return distilled.model


def _vocab(subject: Subject, model: ProbeOnEncoder, notes: list[str]) -> nn.Module:
    tokenize = subject.model.tokenize
    seen = [tokenize(subject.vocab_texts[i:i + 256])
            for i in range(0, len(subject.vocab_texts), 256)]
    full = model.encoder.get_input_embeddings().num_embeddings
    prune_vocabulary(model, seen, tokenize.special_ids, tokenize.unk_id)
    test = [tokenize(subject.test_texts[i:i + 256])
            for i in range(0, len(subject.test_texts), 256)]
    notes.append(f"vocabulary {model.encoder.config.vocab_size} of {full} tokens; "
                 f"{unknown_share(test, model, tokenize.unk_id):.0%} of test texts meet "
                 "a token now read as [UNK]")
    return model


def _student(subject: Subject, model: nn.Module, layers: int,
             settings: DistilSettings) -> Distilled:
    if isinstance(model, ProbeOnEncoder):
        student = truncated_encoder(model, layers)
        return distil_pretrained(student, subject.model.tokenize, subject.public_texts,
                                 subject.public_targets, subject.public_features,
                                 subject.temperature, settings)
    student = scratch_student(model, subject.model_config, layers)
    return distil_scratch(student, subject.public_ids, subject.public_targets,
                          subject.temperature, settings)


Trained = dict[tuple, tuple[nn.Module, list[str]]]  # a student recipe prefix -> (model, notes)


def build_recipe(subject: Subject, recipe: str, settings: DistilSettings,
                 trained: Trained) -> tuple[nn.Module, list[str]]:
    """The teacher with ``recipe``'s steps applied, and notes on what they did."""
    steps = parse_recipe(recipe, subject.model.kind)
    notes: list[str] = []
    model, start = subject.model.module, 0
    for n in range(len(steps), 0, -1):  # the longest prefix already trained
        if tuple(steps[:n]) in trained:
            (model, done), start = trained[tuple(steps[:n])], n
            notes.extend(done)
            break
    model = copy.deepcopy(model)
    for n in range(start, len(steps)):
        model = _apply(subject, model, steps[n], settings, notes)
        if steps[n][0] == "student":
            trained[tuple(steps[:n + 1])] = (copy.deepcopy(model), list(notes))
    return model.eval(), notes


def run_recipes(subject: Subject, config: CompressConfig,
                progress: Callable[[str], None] = lambda _: None) -> list[dict]:
    """Build and measure every recipe (the teacher first), one row each."""
    recipes = config.recipes or default_recipes(subject.model.kind)
    for recipe in recipes:
        parse_recipe(recipe, subject.model.kind)  # refuse a bad recipe before any work
    texts, labels = subject.test_texts, subject.test_y
    if config.test_limit:
        texts, labels = texts[:config.test_limit], labels[:config.test_limit]
    trained: Trained = {}
    rows = []
    for recipe in recipes:
        progress(recipe)
        module, notes = build_recipe(subject, recipe, config.distil, trained)
        row = measure(subject.model.with_module(module), texts, labels, config.latency)
        rows.append({"recipe": recipe, **row, "notes": "; ".join(notes)})
    return rows
