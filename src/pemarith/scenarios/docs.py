"""Publish results into the docs: a committed results file, its figures, the page's tables.

``publish_docs(results, "docs/results", "distribution-generalisation")`` writes

- ``docs/results/data/<stem>.json``: the results (committed; the single source of the numbers),
- ``docs/results/img/<stem>/*.png``: the figures, drawn from that file,
- the generated blocks of ``docs/results/<stem>.md`` (page created with every block if missing).

A quick run publishes as ``<stem>-quick.json`` and fills the blocks named ``quick-<block>``,
so a page can show quick results, labelled, until the full run is done. A block with no data
file behind it holds :data:`NOT_RUN`. :func:`check_page` re-renders a page's blocks from the data
files and lists those that differ (a test calls it).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .report import blocks, update_blocks
from .scenario import get_scenario
from .store import read_json, write_json

#: The body of a generated block whose results are not published yet.
NOT_RUN = "_Not run in full yet: see Status above._"


def data_stem(results: Mapping[str, Any], stem: str) -> str:
    return stem + ("-quick" if results["recipe"].get("quick") else "")


def rendered_blocks(results: Mapping[str, Any], stem: str) -> dict[str, str]:
    """The page blocks for ``results``: the scenario's sections (``quick-`` prefixed for a
    quick run) and a ``figures`` block linking the published images."""
    scenario = get_scenario(results["recipe"]["scenario"])
    prefix = "quick-" if results["recipe"].get("quick") else ""
    out = {prefix + "status": status(results)}
    out.update({prefix + k: v for k, v in scenario.sections(results).items()})
    return out


def status(results: Mapping[str, Any]) -> str:
    """One paragraph: what the results file holds (cells, tasks, seeds, when)."""
    r = results["recipe"]
    cells = results.get("cells", [])
    tasks = sorted({c.get("task", "") for c in cells})
    seeds = sorted({c.get("seed") for c in cells if c.get("seed") is not None})
    kind = (
        "**Quick run** (tiny sizes: it checks the pipeline end to end on the real model; "
        "its numbers are not results)"
        if r.get("quick")
        else "**Full run**"
    )
    return (
        f"{kind}: {len(cells)} finished cells; tasks {', '.join(tasks) or '-'}; "
        f"seeds {', '.join(map(str, seeds)) or '-'} (recipe: {', '.join(r['tasks'])} x seeds "
        f"{', '.join(map(str, r['seeds']))}); results updated {results.get('updated', '?')}."
    )


def publish_docs(results: Mapping[str, Any], docs_dir: str | Path, stem: str) -> list[Path]:
    """Write the data file, the figures and the page's blocks (see the module docstring)."""
    docs = Path(docs_dir)
    name = data_stem(results, stem)
    written = []
    data = docs / "data" / f"{name}.json"
    write_json(data, results)
    written.append(data)
    img = docs / "img" / name
    if img.exists():
        shutil.rmtree(img)
    img.mkdir(parents=True)
    scenario = get_scenario(results["recipe"]["scenario"])
    figures = scenario.plot(results, img)
    written += figures
    bodies = rendered_blocks(results, stem)
    prefix = "quick-" if results["recipe"].get("quick") else ""
    bodies[prefix + "figures"] = (
        "\n".join(f"![{f.stem}](img/{name}/{f.name})" for f in sorted(figures)) or "(no figures)"
    )
    page = docs / f"{stem}.md"
    if page.is_file():
        text = page.read_text(encoding="utf-8")
        missing = [b for b in bodies if b not in blocks(text)]
        if not prefix:  # a full-run block the page lacks is appended, so nothing is lost;
            for b in missing:  # a quick run fills only the quick blocks the page has
                text += f"\n<!-- BEGIN GENERATED: {b} -->\n<!-- END GENERATED: {b} -->\n"
    else:
        text = f"# {scenario.title}\n" + "".join(
            f"\n<!-- BEGIN GENERATED: {b} -->\n<!-- END GENERATED: {b} -->\n" for b in bodies
        )
    page.write_text(update_blocks(text, bodies), encoding="utf-8")
    written.append(page)
    return written


def check_page(page: str | Path) -> list[str]:
    """Names of the page's generated blocks that differ from a fresh rendering of its data."""
    page = Path(page)
    stem = page.stem
    found = blocks(page.read_text(encoding="utf-8"))
    fresh: dict[str, str] = {}
    for name in (stem, f"{stem}-quick"):
        data = page.parent / "data" / f"{name}.json"
        if data.is_file():
            results = read_json(data)
            static = get_scenario(results["recipe"]["scenario"]).static
            fresh = {**(static() if static else {}), **fresh, **rendered_blocks(results, stem)}
    return [
        b
        for b, body in found.items()
        if not b.endswith("figures") and fresh.get(b, NOT_RUN).rstrip("\n") != body.rstrip("\n")
    ]
