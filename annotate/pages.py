"""Server-rendered HTML for annotators and the admin: plain HTML forms (every action works
without JavaScript) plus one small script for keyboard shortcuts.

All user-supplied text goes through :func:`esc` (``html.escape`` with quotes), and the pages are
served with a Content-Security-Policy that allows only our own script file, so a ``<script>`` in a
prompt or candidate is shown as text and never run.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote

CSS = """
:root { --fg:#1d2330; --muted:#5d6677; --line:#d9dee7; --bg:#f6f7f9; --card:#fff; --accent:#2f5bd3; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { display:flex; justify-content:space-between; align-items:center; padding:10px 24px; background:var(--card); border-bottom:1px solid var(--line); }
header .brand { font-weight:600; } header .progress { color:var(--muted); }
main { max-width:1180px; margin:20px auto; padding:0 24px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:16px 18px; margin-bottom:16px; }
.role { font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted); }
.text { white-space:pre-wrap; word-wrap:break-word; margin:4px 0 10px; font:inherit; }
.pair { display:grid; grid-template-columns:1fr 1fr; gap:16px; }
.pair h2 { margin:0 0 6px; font-size:15px; }
.key { display:inline-block; min-width:1.6em; padding:0 5px; border:1px solid var(--line); border-bottom-width:2px; border-radius:4px; font:12px ui-monospace,monospace; text-align:center; color:var(--muted); background:#fafbfc; }
.actions { display:flex; flex-wrap:wrap; gap:8px; margin:6px 0 14px; }
button { font:inherit; padding:8px 14px; border-radius:8px; border:1px solid var(--line); background:var(--card); cursor:pointer; }
button.primary { background:var(--accent); border-color:var(--accent); color:#fff; }
button:hover { filter:brightness(.97); }
.tags { display:flex; flex-wrap:wrap; gap:6px 14px; margin:4px 0 10px; }
.tags label { color:var(--fg); }
textarea { width:100%; min-height:90px; font:inherit; padding:8px; border:1px solid var(--line); border-radius:8px; }
table { border-collapse:collapse; width:100%; } th,td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); }
.muted { color:var(--muted); } .error { color:#b42318; }
.login { max-width:520px; margin:60px auto; } .top { margin-top:0; }
form.inline { display:inline; } button.small { padding:2px 8px; font-size:13px; }
input[type=password] { font:inherit; padding:8px; width:100%; max-width:420px; border:1px solid var(--line); border-radius:8px; }
"""

# Keyboard shortcuts; ignored while typing in the rewrite box (Escape leaves it).
JS = """
(function () {
  var form = document.getElementById('judge');
  if (!form) return;
  var sent = false;
  form.addEventListener('submit', function (e) { if (sent) { e.preventDefault(); } sent = true; });
  var keys = {'1':'left', 'a':'left', 'ArrowLeft':'left', '2':'right', 'b':'right', 'ArrowRight':'right',
              '3':'tie', 't':'tie', '4':'both_bad', 'x':'both_bad', 's':'skip'};
  document.addEventListener('keydown', function (e) {
    var t = e.target;
    if (t && (t.tagName === 'TEXTAREA' || t.tagName === 'INPUT')) {
      if (e.key === 'Escape') { t.blur(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === 'r') { e.preventDefault(); var d = document.getElementById('rewrite-box'); d.open = true;
      document.getElementById('rewrite').focus(); return; }
    var choice = keys[e.key];
    if (!choice) return;
    e.preventDefault();
    var btn = document.getElementById('btn-' + choice);
    if (btn && !sent) { form.requestSubmit(btn); }
  });
})();
"""


def esc(value: Any) -> str:
    return escape("n/a" if value is None else str(value), quote=True)


def page(title: str, body: str, header: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)}</title><link rel=stylesheet href="/static/app.css"></head>'
        f"<body>{header}<main>{body}</main>"
        '<script src="/static/app.js"></script></body></html>'
    )


def csrf_field(token: str) -> str:
    """The hidden CSRF field every form carries (see ``csrf.py``)."""
    return f'<input type=hidden name=csrf_token value="{esc(token)}">'


def login_page(csrf: str, error: str = "") -> str:
    err = f'<p class="error">{esc(error)}</p>' if error else ""
    body = (
        '<div class="card login"><h1 class=top>onbrand annotation</h1>'
        "<p class=muted>Paste the access token your admin gave you.</p>"
        f'{err}<form method=post action="/login">{csrf_field(csrf)}<p><input type=password name=token id=token '
        'autocomplete=off autofocus required maxlength=200 placeholder="token"></p>'
        "<button class=primary type=submit id=login>Sign in</button></form></div>"
    )
    return page("Sign in", body)


def _header(brand: str, who: str, progress: str, csrf: str, links: str = "") -> str:
    """``links``: trusted HTML of extra navigation (fixed strings only, never user text)."""
    return (
        f"<header><span class=brand>{esc(brand)}</span><span class=progress id=progress>{esc(progress)}</span>"
        f'<span class=muted>{links}{esc(who)} · <form method=post action="/logout" class=inline>'
        f"{csrf_field(csrf)}<button type=submit class=small>Sign out</button></form></span></header>"
    )


def _messages(prompt: list[dict[str, str]]) -> str:
    return "".join(
        f'<div class=role>{esc(m["role"])}</div><div class="text prompt">{esc(m["content"])}</div>'
        for m in prompt
    )


def annotate_page(ctx: dict[str, Any]) -> str:
    """``ctx``: brand, annotator, role, done, total, csrf, and item (None when the queue is empty)."""
    progress = f"{ctx['done']} / {ctx['total']} judged"
    links = '<a href="/review" id=nav-review>Review</a> · ' if ctx.get("role") == "reviewer" else ""
    header = _header(ctx["brand"], ctx["annotator"], progress, ctx["csrf"], links)
    item = ctx.get("item")
    if item is None:
        body = (
            "<div class=card id=empty><h2>All done.</h2><p class=muted>No items left in your queue.</p></div>"
        )
        return page("Annotate", body, header)
    tags = "".join(
        f'<label><input type=checkbox name=tags value="{esc(t)}"> {esc(t)}</label>'
        for t in ctx["reason_tags"]
    )
    button = '<button type=submit id="btn-{v}" name=choice value="{v}"{cls}>{label} <span class=key>{k}</span></button>'
    buttons = "".join(
        button.format(v=v, label=label, k=k, cls=" class=primary" if v in ("left", "right") else "")
        for v, label, k in (
            ("left", "A is better", "1"),
            ("right", "B is better", "2"),
            ("tie", "Tie", "3"),
            ("both_bad", "Both bad", "4"),
            ("skip", "Skip", "S"),
        )
    )
    channel = f" <span class=muted>· channel: {esc(item['channel'])}</span>" if item.get("channel") else ""
    body = (
        f"<div class=card><div class=muted>Item {esc(item['assignment_id'])}{channel}</div>{_messages(item['prompt'])}</div>"
        f'<form method=post action="/annotate/submit" id=judge>{csrf_field(ctx["csrf"])}'
        f'<input type=hidden name=assignment_id value="{esc(item["assignment_id"])}">'
        f'<input type=hidden name=submission_id value="{esc(item["submission_id"])}">'
        "<div class=pair>"
        f'<div class=card><h2>A <span class=key>1</span></h2><div class="text" id=cand-left>{esc(item["left"])}</div></div>'
        f'<div class=card><h2>B <span class=key>2</span></h2><div class="text" id=cand-right>{esc(item["right"])}</div></div>'
        "</div>"
        f"<div class=actions>{buttons}</div>"
        f"<div class=card><div class=role>Reasons (from the brand card)</div><div class=tags>{tags}</div>"
        "<details id=rewrite-box><summary>Rewrite the better answer (optional) <span class=key>R</span></summary>"
        '<textarea name=rewrite id=rewrite maxlength=20000 placeholder="An improved version of the better answer; '
        'saved as a new chosen answer. Esc leaves the box."></textarea></details></div>'
        "</form>"
        "<p class=muted>Keys: <span class=key>1</span>/<span class=key>A</span> A better · <span class=key>2</span>/"
        "<span class=key>B</span> B better · <span class=key>3</span>/<span class=key>T</span> tie · "
        "<span class=key>4</span>/<span class=key>X</span> both bad · <span class=key>S</span> skip · "
        "<span class=key>R</span> rewrite</p>"
    )
    return page("Annotate", body, header)


def error_page(status: int, message: str) -> str:
    body = f'<div class=card><h2>Error {status}</h2><p class=error>{esc(message)}</p><p><a href="/">Back</a></p></div>'
    return page(f"Error {status}", body)


def _ci(value: Any, ci: list[float] | None) -> str:
    """``0.8 [0.3755, 0.9638]``: a proportion with its 95% interval (``n/a`` when undefined)."""
    return esc(value) + (f" [{esc(ci[0])}, {esc(ci[1])}]" if ci else "")


def _annotator_rows(annotators: list[dict[str, Any]]) -> str:
    """One row per annotator: progress, speed, gold accuracy and agreement with the majority."""
    head = (
        "<tr><th>Annotator</th><th>Judged / assigned</th><th>Per hour</th><th>Median s / judgement</th>"
        "<th>Gold judged</th><th>Gold accuracy [95% CI]</th><th>Agrees with majority (n)</th><th>Last</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{esc(r['annotator'])}</td><td>{esc(r['judged'])} / {esc(r['assigned'])}</td>"
        f"<td>{esc(r['per_hour'])}</td><td>{esc(r.get('speed_median_seconds'))}</td>"
        f"<td>{esc(r.get('gold_judged', 0))}</td>"
        f"<td>{_ci(r.get('gold_accuracy'), r.get('gold_accuracy_ci95'))}</td>"
        f"<td>{esc(r.get('majority_agreement'))} (n {esc(r.get('majority_compared', 0))})</td>"
        f"<td>{esc(r['last'])}</td></tr>"
        for r in annotators
    )
    return f"<table>{head}{rows}</table>"


def _quality_lines(st: dict[str, Any]) -> str:
    """The project's gold summary and agreement (nominal and ordinal alpha, raw, kappa per pair)."""
    g, ag = st.get("gold") or {}, st["agreement"]
    gold = (
        f"<p>Gold: {esc(g['items'])} items at rate {esc(g['rate'])}; {esc(g['judgements'])} judged, "
        f"accuracy {_ci(g['accuracy'], g['accuracy_ci95'])} (95% CI)</p>"
        if g.get("items")
        else ""
    )
    o = ag.get("ordinal") or {}
    kappas = "".join(
        f"<tr><td>{esc(' & '.join(k['annotators']))}</td><td>{esc(k['items'])}</td><td>{esc(k['kappa'])}</td></tr>"
        for k in ag["cohen_kappa"]
    )
    return (
        f"{gold}<p>Agreement on {esc(ag['items_overlapping'])} overlapping non-gold items: Krippendorff alpha "
        f"nominal <b>{esc(ag['krippendorff_alpha'])}</b>, ordinal (a &lt; tie &lt; b) "
        f"<b>{esc(ag.get('krippendorff_alpha_ordinal'))}</b> on {esc(o.get('items', 0))} items "
        f"({esc(o.get('excluded', 0))} both_bad left out), raw agreement {esc(ag['percent_agreement'])}</p>"
        f"<table><tr><th>Pair</th><th>Shared items</th><th>Cohen kappa</th></tr>{kappas}</table>"
    )


def admin_page(stats: list[dict[str, Any]], csrf: str, members_html: dict[str, str] | None = None) -> str:
    """Progress, throughput, annotator quality and agreement of every project (``project_stats``);
    ``members_html``: the trusted, already escaped member card of each project (``pages_members``)."""
    members_html = members_html or {}
    parts = [
        f"<div class=card><h2 class=top>{esc(st['project'])} <span class=muted>· {esc(st['brand'])}</span></h2>"
        f"<p>{esc(st['judgements'])} judgements on {esc(st['tasks'])} tasks · labels {esc(json.dumps(st['labels']))} · "
        f"left chosen {esc(st['left_chosen_rate'])}</p>"
        f"{_annotator_rows(st['annotators'])}{_quality_lines(st)}{members_html.get(st['project'], '')}</div>"
        for st in stats
    ]
    body = "".join(parts) or "<p class=muted>No projects yet.</p>"
    links = '<a href="/review" id=nav-review>Review</a> · '
    return page("Admin", body, _header("onbrand admin", "admin", f"{len(stats)} project(s)", csrf, links))


VERDICTS = (("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))


def _review_item(item: dict[str, Any], ctx: dict[str, Any]) -> str:
    votes = ", ".join(f"{esc(v['annotator'])}: {esc(v['choice'])}" for v in item["votes"])
    verdict = item.get("adjudication")
    status = f"verdict <b>{esc(verdict)}</b>" if verdict else "no verdict yet"
    buttons = "".join(
        f'<button type=submit name=choice value="{v}" id="verdict-{item["task_id"]}-{v}"'
        f"{' class=primary' if v == verdict else ''}>{label}</button>"
        for v, label in VERDICTS
    )
    channel = f" · channel: {esc(item['channel'])}" if item.get("channel") else ""
    return (
        f'<div class=card id="task-{esc(item["task_id"])}"><div class=muted>Task {esc(item["task_id"])}{channel}'
        f" · votes: {votes} · {status}</div>{_messages(item['prompt'])}"
        "<div class=pair>"
        f'<div class=card><h2>A</h2><div class="text cand-a">{esc(item["candidate_a"])}</div></div>'
        f'<div class=card><h2>B</h2><div class="text cand-b">{esc(item["candidate_b"])}</div></div></div>'
        f'<form method=post action="/review/adjudicate">{csrf_field(ctx["csrf"])}'
        f'<input type=hidden name=task_id value="{esc(item["task_id"])}">'
        f'<input type=hidden name=project value="{esc(ctx["project"] if ctx["admin"] else "")}">'
        '<p><textarea name=note maxlength=2000 placeholder="Note (optional): why this verdict"></textarea></p>'
        f"<div class=actions>{buttons}</div></form></div>"
    )


def review_page(ctx: dict[str, Any]) -> str:
    """``ctx``: who, project, brand, admin (bool), csrf, items (``review.disagreements``)."""
    items = ctx["items"]
    open_n = sum(1 for it in items if not it.get("adjudication"))
    header = _header(ctx["brand"], ctx["who"], f"{open_n} of {len(items)} open", ctx["csrf"])
    intro = (
        f"<h1 class=top>Disagreements in {esc(ctx['project'])}</h1>"
        "<p class=muted>Items annotators judged differently. A and B are shown in their stored order; "
        "your verdict wins over the votes in the export.</p>"
    )
    body = intro + ("".join(_review_item(it, ctx) for it in items) or "<p id=empty>No disagreements.</p>")
    return page("Review", body, header)


def review_choose_page(projects: list[str], csrf: str) -> str:
    """An admin picks the project to review."""
    links = "".join(f'<li><a href="/review?project={quote(p, safe="")}">{esc(p)}</a></li>' for p in projects)
    body = f"<div class=card><h2 class=top>Review which project?</h2><ul>{links}</ul></div>"
    return page("Review", body, _header("onbrand review", "admin", f"{len(projects)} project(s)", csrf))
