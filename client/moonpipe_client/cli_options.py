"""The ``moonpipe-client`` command line: every option, which skills take it, and its help.

One table (:data:`SKILL_OPTIONS`) says which skill takes which setting; the parser is built
from it and so is the error for a flag given to a skill that does not take it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from moonpipe_client.client import DEFAULT_TIMEOUT, DEFAULT_URL
from moonpipe_client.connection import parse_header
from moonpipe_client.results import SKILLS

__all__ = ["SKILL_HELP", "SKILL_OPTIONS", "TEXT_HELP", "SkillOption", "build_parser", "skills_taking"]

URL_ENV = "MOONPIPE_URL"
DEFAULT_CONCURRENCY = 8

SKILL_HELP = {
    "caption": "describe the image in words (short, normal or long)",
    "query": "answer a question about the image",
    "point": "point at every instance of an object: one (x, y) per instance",
    "detect": "box every instance of an object: one bounding box per instance",
    "segment": "outline an object: an SVG path and its bounding box",
}
TEXT_HELP = {"query": "the question", "point": "the object to point at",
             "detect": "the object to detect", "segment": "the object to outline"}


@dataclass(frozen=True, slots=True)
class SkillOption:
    """One option of some skills: its flag, the skills that take it, argparse keywords."""

    flag: str
    skills: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


SKILL_OPTIONS: tuple[SkillOption, ...] = (
    SkillOption("--length", ("caption",), {
        "choices": ("short", "normal", "long"), "default": "normal",
        "help": "how long a caption to write (default normal)"}),
    SkillOption("--max-tokens", ("caption", "query", "segment"), {
        "type": int, "metavar": "N",
        "help": "most tokens to generate, 1-2048 (default: the server's, 768 on moonpipe)"}),
    SkillOption("--temperature", ("caption", "query"), {
        "type": float, "metavar": "T",
        "help": "sampling temperature 0-5, 0 = always the likeliest token "
                "(default: the server's, 0.5 on moonpipe)"}),
    SkillOption("--top-p", ("caption", "query"), {
        "type": float, "metavar": "P",
        "help": "nucleus sampling: sample from the likeliest tokens up to this total "
                "probability, (0, 1] (default: the server's, 0.3 on moonpipe)"}),
    SkillOption("--max-objects", ("point", "detect"), {
        "type": int, "metavar": "N",
        "help": "most objects to return, 1-256 (default: the server's, 50 on moonpipe)"}),
    SkillOption("--stream", ("caption", "query", "point", "detect"), {
        "action": "store_true",
        "help": "print the output as it arrives: text as it is written, points or boxes one "
                "JSON line each"}),
    SkillOption("--draw", ("point", "detect", "segment"), {
        "metavar": "OUT.png",
        "help": "also save the image with the result drawn on it as a PNG (default: no picture)"}),
)


def skills_taking(flag: str) -> tuple[str, ...]:
    """The skills that take ``flag`` (empty for a flag no skill takes)."""
    return next((o.skills for o in SKILL_OPTIONS if o.flag == flag), ())


def _header(text: str) -> tuple[str, str]:
    try:
        return parse_header(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Accepted before and after the skill; the sub-command copy only overrides when given
    (headers given in both places add up: ``header_after``)."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection (before or after the skill)")
    group.add_argument("--url", default=default(os.environ.get(URL_ENV, DEFAULT_URL)), metavar="URL",
                       help=f"the server's gRPC address host:port; http:// or https:// (TLS) in front "
                            f"are accepted (default: ${URL_ENV}, else {DEFAULT_URL})")
    group.add_argument("--timeout", type=float, default=default(DEFAULT_TIMEOUT), metavar="SECONDS",
                       help=f"seconds one whole request may take (default {DEFAULT_TIMEOUT:g})")
    group.add_argument("--tls", action="store_true", default=default(False),
                       help="connect with TLS, checked against the system's root certificates "
                            "(https:// or a certificate option imply it)")
    group.add_argument("--ca-cert", metavar="PEM", default=default(None),
                       help="root certificate(s) to check the server's TLS certificate against "
                            "(default: the system's)")
    group.add_argument("--client-cert", metavar="PEM", default=default(None),
                       help="this client's certificate for mutual TLS, with --client-key "
                            "(default: none)")
    group.add_argument("--client-key", metavar="PEM", default=default(None),
                       help="the private key of --client-cert (default: none)")
    group.add_argument("--header", dest="header_after" if suppress else "header", action="append",
                       type=_header, metavar="'NAME: VALUE'", default=default(None),
                       help="send this gRPC metadata with every call, e.g. 'authorization: Bearer "
                            "TOKEN'; repeatable (default: none)")


def _batch_options(sub: argparse.ArgumentParser) -> None:
    group = sub.add_argument_group("batch: one JSON line per image of a folder")
    group.add_argument("--images", metavar="DIR",
                       help="run on every image under DIR, recursively, instead of IMAGE (default: "
                            "a single IMAGE)")
    group.add_argument("--out", metavar="FILE", default="-",
                       help="the JSON lines file; it is replaced only once results exist (default - "
                            "= stdout)")
    group.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, metavar="N",
                       help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="skip the images FILE already has a result for, keep its results and "
                           "run the rest (and the failed ones) again")
    mode.add_argument("--append", action="store_true",
                      help="add the new lines to the end of FILE instead of replacing it")


def _skill_parser(skills: Any, skill: str) -> None:
    sub = skills.add_parser(skill, help=SKILL_HELP[skill], description=SKILL_HELP[skill].capitalize() + ".")
    sub.add_argument("image", nargs="?", help="the image file: JPEG, PNG, WebP, GIF... (omit with --images)")
    if skill != "caption":
        sub.add_argument("text", nargs="?", help=TEXT_HELP[skill])
        flag = "--question" if skill == "query" else "--object"
        sub.add_argument(flag, dest="text_option", metavar="TEXT", help=f"{TEXT_HELP[skill]} (same as TEXT)")
    settings = sub.add_argument_group("settings")
    for option in SKILL_OPTIONS:
        if skill in option.skills:
            settings.add_argument(option.flag, **option.kwargs)
    settings.add_argument("--json", action="store_true",
                          help="print the result as one JSON object: Moondream's shape plus "
                               "finish_reason, num_input_tokens and num_output_tokens")
    _batch_options(sub)
    _connection_options(sub, suppress=True)


def build_parser(prog: str = "moonpipe-client", skills: Sequence[str] = SKILLS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Ask a moonpipe server (Moondream on Triton) about images.",
        epilog="Exit codes: 0 success; 1 invalid request or a failed image; 2 bad usage; "
               "3 server unreachable or too slow; 130 interrupted. `moonpipe-client SKILL --help` "
               "lists a skill's options.")
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="skill", required=True, metavar="SKILL")
    for skill in skills:
        _skill_parser(sub, skill)
    return parser
