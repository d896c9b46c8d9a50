"""Hand a project's tasks to Label Studio or Argilla; their exports come back with ``onbrand data import``.

``onbrand annotate export --to label-studio|argilla --project P --out F`` writes the project's
*tasks* (the pairs to judge, not judgements) in the shape each tool imports:

* Label Studio: ``F`` is a JSON array of ``{"data": {"prompt", "answer1", "answer2", "channel",
  "brand", "onbrand_task_id"}}`` and ``F`` with suffix ``.xml`` the matching labeling config (the
  ``<Pairwise>`` tag over ``answer1,answer2``). Annotate, export the project as "JSON", then
  ``onbrand data import EXPORT.json --format label-studio``.
* Argilla: ``F`` (``.json``: one array, what ``dataset.records.from_json`` reads; ``.jsonl``: one
  record a line, for ``rg.Record.from_dict``) holds ``{"id", "fields": {"prompt", "response1",
  "response2"}, "metadata": {"onbrand_task_id", "channel", "brand"}}``; ``F`` with suffix
  ``.settings.py`` creates the matching dataset (three text fields + a ranking question). Annotate,
  ``dataset.records.to_json(...)``, then ``onbrand data import EXPORT.json --format argilla``.

Which candidate is shown first is drawn per task (sha256 of the project seed and task id), as the
web app draws left/right per assignment, so a position bias in the tool does not line up with the
generator's candidate order. A prompt that is not a single user turn is shown as a transcript and
kept exactly in ``prompt_messages`` (Label Studio data; Argilla metadata, as a JSON string).
Gold items are never exported: their answer is known, and they must never become training pairs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from onbrand.artifacts import atomic_write_text

TOOLS = ("label-studio", "argilla")

LABEL_STUDIO_CONFIG = """<View>
  <Header value="Which answer fits the brand better? Click it."/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="comparison" toName="answer1,answer2"/>
  <Text name="answer1" value="$answer1"/>
  <Text name="answer2" value="$answer2"/>
</View>
"""

ARGILLA_SETTINGS = '''"""Create the Argilla dataset for tasks exported by `onbrand annotate export --to argilla`."""
import argilla as rg

settings = rg.Settings(
    guidelines="Rank the two responses: which one fits the brand better goes first.",
    fields=[
        rg.TextField(name="prompt"),
        rg.TextField(name="response1"),
        rg.TextField(name="response2"),
    ],
    questions=[rg.RankingQuestion(name="preference", values=["response1", "response2"])],
    metadata=[
        rg.IntegerMetadataProperty(name="onbrand_task_id"),
        rg.TermsMetadataProperty(name="channel"),
        rg.TermsMetadataProperty(name="brand"),
    ],
    allow_extra_metadata=True,  # prompt_messages, for prompts that are not a single user turn
)
# client = rg.Argilla(api_url=..., api_key=...)
# dataset = rg.Dataset(name="{name}", settings=settings, client=client).create()
# dataset.records.from_json("{records}")
# ... annotate, then: dataset.records.to_json("export.json")
# onbrand data import export.json --format argilla
'''


def prompt_text(messages: list[dict[str, str]]) -> str:
    """What the tool shows: a lone user turn as is, anything longer as a role-labelled transcript."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def _swapped(seed: int, task_id: int) -> bool:
    return hashlib.sha256(f"{seed}:{task_id}".encode()).digest()[0] & 1 == 1


def _payload(project: Any, task: Any) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """(prompt fields, [first, second] candidate texts, metadata) of one task."""
    pair = [task.candidate_a, task.candidate_b]
    if _swapped(project.seed, task.id):
        pair.reverse()
    prompt: dict[str, Any] = {"prompt": prompt_text(task.prompt)}
    single = len(task.prompt) == 1 and task.prompt[0].get("role") == "user"
    exact = None if single else task.prompt
    meta: dict[str, Any] = {"onbrand_task_id": task.id, "brand": project.brand_id}
    if task.channel:
        meta["channel"] = task.channel
    return prompt, pair, {"exact": exact, **meta}


def label_studio_tasks(project: Any, tasks: list[Any]) -> list[dict[str, Any]]:
    out = []
    for task in tasks:
        prompt, (first, second), meta = _payload(project, task)
        exact = meta.pop("exact")
        data = {**prompt, "answer1": first, "answer2": second, **meta}
        if exact is not None:
            data["prompt_messages"] = exact
        out.append({"data": data})
    return out


def argilla_records(project: Any, tasks: list[Any]) -> list[dict[str, Any]]:
    out = []
    for task in tasks:
        prompt, (first, second), meta = _payload(project, task)
        exact = meta.pop("exact")
        if exact is not None:
            meta["prompt_messages"] = json.dumps(exact, ensure_ascii=False)
        out.append(
            {
                "id": f"{project.name}-{task.id}",
                "fields": {**prompt, "response1": first, "response2": second},
                "metadata": meta,
                "suggestions": {},
                "responses": {},
                "vectors": {},
            }
        )
    return out


def _array(items: list[dict[str, Any]]) -> str:
    return "[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in items) + "\n]\n"


def companion(out: Path, to: str) -> Path:
    """The file written next to ``out``: the Label Studio config or the Argilla settings script."""
    base = out.with_suffix("") if out.suffix else out
    return base.with_name(base.name + (".xml" if to == "label-studio" else ".settings.py"))


def export_tasks(s: Any, project: Any, to: str, out: str | Path) -> dict[str, Any]:
    """Write ``project``'s non-gold tasks for ``to`` (one of :data:`TOOLS`) to ``out`` + its companion."""
    from sqlalchemy import select

    from onbrand.annotate.db import Task

    if to not in TOOLS:
        raise ValueError(f"--to: expected one of {', '.join(TOOLS)}, got {to!r}")
    out = Path(out)
    side = companion(out, to)
    if side == out:
        raise ValueError(f"--out {out}: pick a name whose suffix is not {out.suffix} (the config goes there)")
    tasks = list(s.scalars(select(Task).where(Task.project_id == project.id).order_by(Task.id)))
    kept = [t for t in tasks if not getattr(t, "gold", None)]
    if to == "label-studio":
        atomic_write_text(out, _array(label_studio_tasks(project, kept)))
        atomic_write_text(side, LABEL_STUDIO_CONFIG)
    else:
        records = argilla_records(project, kept)
        if out.suffix.lower() == ".jsonl":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        else:
            text = _array(records)
        atomic_write_text(out, text)
        atomic_write_text(
            side, ARGILLA_SETTINGS.replace("{name}", project.name).replace("{records}", out.name)
        )
    return {
        "tasks": len(kept),
        "gold_not_exported": len(tasks) - len(kept),
        "out": str(out),
        "companion": str(side),
    }


def export_command(args: Any) -> int:
    """``onbrand annotate export --to ...`` (called from ``onbrand.annotate.cli.cmd_export``)."""
    from onbrand.annotate.db import open_db
    from onbrand.annotate.service import get_project

    with open_db(args.db)() as s:
        try:
            project = get_project(s, args.project)
        except LookupError as e:
            raise ValueError(str(e)) from None
        counts = export_tasks(s, project, args.to, args.out)
    what = "labeling config" if args.to == "label-studio" else "dataset settings"
    print(f"wrote {counts['tasks']} tasks to {counts['out']} ({args.to}); {what}: {counts['companion']}")
    if counts["gold_not_exported"]:
        print(f"gold items not exported: {counts['gold_not_exported']}")
    fmt = args.to
    print(
        f"next: annotate in {fmt}, export its JSON, then: onbrand data import EXPORT.json --format {fmt}",
        file=sys.stderr,
    )
    return 0
