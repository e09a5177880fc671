"""Decide which images an ECR lifecycle policy expires, as ECR documents it.

ECR user guide, "Lifecycle policy properties" and "How lifecycle policies work"
(its evaluation rules), with the worked cases of "Examples of lifecycle policies":

- every rule selects by tag: `untagged` images without a tag, `any` every image,
  `tagged` images where every entry of `tagPrefixList` (or `tagPatternList`, `*` a
  wildcard) matches at least one of the image's tags;
- a rule marks, among the images it selects, those past its count: with
  `imageCountMoreThan` all but the `countNumber` most recently pushed, with
  `sinceImagePushed` those pushed more than `countNumber` days before the evaluation;
- a rule counts every image it selects, including those a rule of higher priority
  (lower `rulePriority`) selected, but never expires one of them: "an image that matches
  the tagging requirements of a rule cannot be expired by a rule with a lower priority";
- an image is expired by one rule or by none.

moto stores a repository's lifecycle policy but never applies it, so the tests evaluate
the policy here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Image:
    """One image of a repository: its digest, its tags and when it was pushed."""

    digest: str
    tags: tuple[str, ...]
    pushed_at: datetime


def _pattern_matches(pattern: str, tag: str) -> bool:
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), tag) is not None


def selects(selection: Mapping[str, Any], image: Image) -> bool:
    """Whether a rule's `selection` picks `image` by its tags (whatever its count)."""
    status = selection["tagStatus"]
    if status == "any":
        return True
    if status == "untagged":
        return not image.tags
    prefixes = selection.get("tagPrefixList", [])
    patterns = selection.get("tagPatternList", [])
    return bool(image.tags) and (
        all(any(tag.startswith(prefix) for tag in image.tags) for prefix in prefixes)
        and all(any(_pattern_matches(pattern, tag) for tag in image.tags) for pattern in patterns)
    )


def marked(selection: Mapping[str, Any], images: Iterable[Image], now: datetime) -> list[Image]:
    """The images, of those a rule selected, that its count puts past the limit."""
    count = int(selection["countNumber"])
    if selection["countType"] == "imageCountMoreThan":
        return sorted(images, key=lambda image: image.pushed_at, reverse=True)[count:]
    if selection["countType"] == "sinceImagePushed":
        assert selection["countUnit"] == "days", selection
        return [image for image in images if image.pushed_at < now - timedelta(days=count)]
    raise ValueError(f"countType {selection['countType']!r} is not evaluated here")


def expired(policy: Mapping[str, Any], images: Sequence[Image], now: datetime) -> set[str]:
    """Digests of the `images` that `policy` (the parsed policy text) expires at `now`."""
    matched_before: set[str] = set()
    gone: set[str] = set()
    for rule in sorted(policy["rules"], key=lambda rule: rule["rulePriority"]):
        assert rule["action"]["type"] == "expire", rule
        selected = [image for image in images if selects(rule["selection"], image)]
        gone |= {
            image.digest
            for image in marked(rule["selection"], selected, now)
            if image.digest not in matched_before
        }
        matched_before |= {image.digest for image in selected}
    return gone
