"""The operator console at /ui over a real Daemon (mock Charter, SQLite in tmp_path) and its
real HTTP face (aiohttp test server): login and sessions, CSRF, the strict CSP, escaping of
untrusted labels, the acts and their journal, the live stream.

The browser drives the same pages in tests/e2e/test_console_browser.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient, TestServer

from builders import settings as settings_for
from mape_k.app import Daemon, build
from mape_k.console.auth import COOKIE, Sessions, token_role
from mape_k.console.data import ConsoleData
from mape_k.console.feed import QUEUE_SIZE, DecisionFeed
from mape_k.console.views import CSP
from mape_k.integrations.alertmanager import Alert
from mape_k.integrations.charter.mock import MockCharterWorld
from mape_k.loop.autonomy import ShadowStats
from mape_k.loop.changes import from_request
from mape_k.server import build_app

ADMIN = "admin-token-for-the-console-tests"
VIEWER = "viewer-token-for-the-console-tests"
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


@contextlib.asynccontextmanager
async def console(tmp_path, clock, *, admin=ADMIN, viewer=None, fault="load_spike", **overrides):
    settings = settings_for(tmp_path, **overrides)
    world = MockCharterWorld.create(clock=clock, seed=3, regime="calm", fault=fault)
    async with build(settings, world=world, clock=clock) as parts:
        app = build_app(
            control=Daemon(parts, clock=clock),
            router=parts.router,
            metrics=parts.metrics,
            config=parts.settings.server,
            webhook_token=None,
            admin_token=admin,
            console=ConsoleData(parts, clock=clock),
            viewer_token=viewer,
        )
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            yield parts, client
        finally:
            await client.close()


async def login(client, token=ADMIN):
    page = await client.get("/ui/login")
    nonce = re.search(r'name="nonce" value="([^"]+)"', await page.text()).group(1)
    return await client.post(
        "/ui/login", data={"token": token, "nonce": nonce}, allow_redirects=False
    )


async def csrf(client, path="/ui"):
    text = await (await client.get(path)).text()
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


def am_alert(*, starts_at, **labels):
    stamp = datetime.fromtimestamp(starts_at, UTC).isoformat().replace("+00:00", "Z")
    return Alert.model_validate(
        {
            "status": "firing",
            "labels": {"alertname": "CharterHighFailureRate", **labels},
            "startsAt": stamp,
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "f1",
        }
    )


# --- pages, headers, escaping ---------------------------------------------------------------


async def test_every_page_carries_the_strict_csp_and_shows_the_last_decision(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        record = await parts.orchestrator.run_once()
        assert record["result"] == "acted"
        for path in ("/ui", "/ui/knowledge", "/ui/targets", "/ui/targets/charter", "/ui/login"):
            response = await client.get(path)
            assert response.status == 200, path
            assert response.headers["Content-Security-Policy"] == CSP
            assert "script-src 'self'" in CSP
            assert "unsafe-inline" not in CSP
            assert response.headers["X-Frame-Options"] == "DENY"
            text = await response.text()
            assert "<script>" not in text, path
            assert " style=" not in text, path
        now = await (await client.get("/ui")).text()
        assert f'href="/ui/decisions/{record["id"]}"' in now
        assert "overload/charter" in now
        page = await client.get(f"/ui/decisions/{record['id']}")
        text = await page.text()
        assert "Acted, because:" in text
        assert record["choice"]["why"].split(":")[0] in text
        assert 'id="candidates"' in text
        assert 'id="guards"' in text
        assert "Beta(" in text  # the posterior of each candidate


async def test_the_now_page_shows_levels_and_the_shadow_ledger(tmp_path, clock):
    overrides = {"autonomy.levels": {"scale_up": {"level": "shadow", "max": "auto"}}}
    async with console(tmp_path, clock, **overrides) as (parts, client):
        record = await parts.orchestrator.run_once()
        assert record["shadow"][0]["actions"] == ["scale_up"]
        text = await (await client.get("/ui")).text()
    assert 'id="autonomy-panel"' in text
    level = "<td><code>scale_up</code></td><td>shadow</td><td>shadow</td><td>shadow .. auto</td>"
    assert level in text
    assert "<td>overload</td><td>scale_up</td><td>1</td><td>0</td><td>—</td>" in text


async def test_the_now_page_shows_the_time_shadow_would_have_saved_and_change_windows(
    tmp_path, clock
):
    async with console(tmp_path, clock, fault="bad_policy") as (parts, client):
        autonomy = parts.orchestrator.pipeline.autonomy
        autonomy.stats[("overload", "scale_up")] = ShadowStats(
            would_do=12, scored=10, helped=8.5, cleared=2, persisted=7, worse=1, saved_s=1240.4
        )
        change = from_request(
            {
                "target": "charter",
                "kind": "deploy",
                "description": HOSTILE,
                "rollback": {"type": "apply_policy", "parameters": {"policy_id": "baseline-v1"}},
            },
            now=clock(),
            config=parts.settings.changes,
            actions=parts.settings.planner.actions,
        )
        await parts.changes.record(change)
        await parts.orchestrator.run_once()
        text = await (await client.get("/ui")).text()
    row = (
        "<td>overload</td><td>scale_up</td><td>12</td><td>10</td><td>0.85</td><td>1240 s</td>"
        "<td>2</td><td>0</td><td>7</td><td>1</td>"
    )
    assert row in text  # whole seconds, as `mape-k status` says it (not 1.24e+03)
    assert 'id="change-windows"' in text
    window = (
        "<tr><td>charter</td><td>2023-11-14 22:43:20 UTC</td>"
        f"<td><code>{change.id}</code> deploy &lt;script&gt;"
    )
    assert window in text
    assert "<td>approve</td><td></td><td>apply_policy keeps its level</td></tr>" in text
    assert HOSTILE not in text


async def test_a_decision_page_shows_its_verification_once_measured(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        acted = await parts.orchestrator.run_once()
        page = f"/ui/decisions/{acted['id']}"
        assert "not measured yet" in await (await client.get(page)).text()
        for _ in range(20):
            clock.advance(30)
            record = await parts.orchestrator.run_once()
            if record["verifications"]:
                break
        [verdict] = record["verifications"]
        text = await (await client.get(page)).text()
        assert f'class="o-{verdict["outcome"]}">{verdict["outcome"]}</strong>' in text
        assert 'href="/ui/targets/charter" id="target-link"' in text


async def test_a_quiet_iteration_reads_did_nothing_because(tmp_path, clock):
    async with console(tmp_path, clock, fault=None) as (parts, client):
        record = await parts.orchestrator.run_once()
        text = await (await client.get(f"/ui/decisions/{record['id']}")).text()
        assert "Did nothing, because:</strong> no violations" in text


async def test_an_unknown_decision_is_a_404_page_not_a_traceback(tmp_path, clock):
    async with console(tmp_path, clock) as (_parts, client):
        response = await client.get("/ui/decisions/no-such-record")
        assert response.status == 404
        assert "no decision record" in await response.text()
        assert response.headers["Content-Security-Policy"] == CSP


async def test_odd_record_shapes_from_the_journal_still_render(tmp_path, clock):
    odd = {
        "id": "odd-1",
        "started_at": 1e20,
        "result": None,
        "choice": None,
        "causes": [None, {"name": "x"}],
        "candidates": [None, "x", {"policy_id": None}],
        "guard_decisions": [{"guard": "g"}],
        "inputs": {"queries": None, "violations": None, "degraded": None},
        "execution": {"actions": None, "status": "completed", "id": None},
        "phases_s": {"total": None},
    }
    async with console(tmp_path, clock) as (parts, client):
        parts.orchestrator.records.append(odd)
        for path in ("/ui/decisions/odd-1", "/ui"):
            response = await client.get(path)
            assert response.status == 200, path


async def test_hostile_alert_labels_render_as_text(tmp_path, clock):
    async with console(tmp_path, clock, fault=None) as (parts, client):
        parts.router.route_alerts(
            [am_alert(starts_at=time.time(), cause="high_failure_rate", component=HOSTILE)]
        )
        record = await parts.orchestrator.run_once()
        assert any(c["target"] == HOSTILE for c in record["causes"])
        for path in ("/ui", f"/ui/decisions/{record['id']}", "/ui/panels"):
            text = await (await client.get(path)).text()
            assert "<script>alert" not in text, path
            assert "<img src=x" not in text, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path


# --- login and sessions ------------------------------------------------------------------


async def test_the_admin_token_becomes_an_httponly_strict_session_cookie(tmp_path, clock):
    async with console(tmp_path, clock) as (_parts, client):
        response = await login(client)
        assert response.status == 303
        cookie = response.cookies[COOKIE]
        assert cookie["httponly"] is True
        assert cookie["samesite"] == "Strict"
        assert cookie["path"] == "/ui"
        assert int(cookie["max-age"]) == 8 * 3600
        assert cookie.value != ADMIN  # the token itself is never the cookie
        now = await (await client.get("/ui")).text()
        assert 'id="role">admin<' in now
        assert 'id="freeze"' in now


async def test_a_wrong_token_or_a_stale_login_form_is_refused(tmp_path, clock):
    async with console(tmp_path, clock) as (_parts, client):
        wrong = await login(client, token="not-the-token")
        assert wrong.status == 401
        assert COOKIE not in wrong.cookies
        assert "wrong token" in await wrong.text()
        client.session.cookie_jar.clear()
        forged = await client.post(
            "/ui/login", data={"token": ADMIN, "nonce": "guessed"}, allow_redirects=False
        )
        assert forged.status == 403  # login CSRF: the nonce must match the form's cookie
        assert COOKIE not in forged.cookies


async def test_with_a_viewer_token_reads_need_a_login_and_a_viewer_cannot_act(tmp_path, clock):
    async with console(tmp_path, clock, viewer=VIEWER) as (parts, client):
        anonymous = await client.get("/ui", allow_redirects=False)
        assert anonymous.status == 303
        assert anonymous.headers["Location"] == "/ui/login"
        assert (await client.get("/ui/events", allow_redirects=False)).status == 303
        assert (await login(client, VIEWER)).status == 303
        page = await client.get("/ui")
        assert page.status == 200
        text = await page.text()
        assert 'id="freeze"' not in text  # no act forms for a viewer
        token = re.search(r'name="csrf" value="([^"]+)"', text).group(1)  # the logout form's
        refused = await client.post(
            "/ui/act/freeze", data={"csrf": token, "why": "x"}, allow_redirects=False
        )
        assert refused.status == 403
        assert parts.orchestrator.envelope.freeze is None


async def test_without_a_viewer_token_reads_are_open_and_acts_still_need_the_admin(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        assert (await client.get("/ui")).status == 200
        refused = await client.post("/ui/act/freeze", data={"why": "x"}, allow_redirects=False)
        assert refused.status == 401
        assert parts.orchestrator.envelope.freeze is None


async def test_a_session_expires_with_its_ttl(tmp_path, clock):
    async with console(tmp_path, clock, viewer=VIEWER, **{"server.console.session_ttl_s": 60}) as (
        _parts,
        client,
    ):
        await login(client, VIEWER)
        assert (await client.get("/ui", allow_redirects=False)).status == 200
        clock.advance(61)
        assert (await client.get("/ui", allow_redirects=False)).status == 303


def test_tokens_map_to_roles_and_sessions_are_bounded():
    assert token_role(ADMIN, admin=ADMIN, viewer=VIEWER) == "admin"
    assert token_role(VIEWER, admin=ADMIN, viewer=VIEWER) == "viewer"
    assert token_role("", admin=ADMIN, viewer=None) is None
    assert token_role(ADMIN, admin=None, viewer=None) is None
    sessions = Sessions(ttl_s=10, max_sessions=3)
    admin = sessions.create("admin", now=0)
    viewers = [sessions.create("viewer", now=1 + i) for i in range(5)]
    assert len(sessions) == 3
    assert sessions.get(admin.id, now=7) is admin  # viewer logins never log an admin out
    assert [sessions.get(v.id, now=7) is v for v in viewers] == [False] * 3 + [True] * 2
    sessions.create("admin", now=8)  # full: the oldest admin goes, the viewers stay
    assert sessions.get(admin.id, now=9) is None
    assert sessions.get(viewers[4].id, now=9) is viewers[4]


async def test_an_odd_form_is_a_4xx_page_never_a_500(tmp_path, clock):
    async with console(tmp_path, clock) as (_parts, client):
        form = "application/x-www-form-urlencoded"
        cases = {
            "utf-16": ({"Content-Type": f"{form}; charset=utf-16"}, b"token=a&nonce=b", 415),
            "no such charset": ({"Content-Type": f"{form}; charset=nope"}, b"token=a", 415),
            "not utf-8": ({"Content-Type": form}, b"token=%ff%fe&nonce=\xff", 400),
            "too many fields": ({"Content-Type": form}, b"&".join([b"a=1"] * 50), 400),
        }
        for name, (headers, body, status) in cases.items():
            response = await client.post("/ui/login", data=body, headers=headers)
            assert response.status == status, name
            assert response.headers["Content-Type"].startswith("text/html"), name

        async def chunks():
            for _ in range(100):
                yield b"a" * 1024

        chunked = await client.post("/ui/login", data=chunks(), headers={"Content-Type": form})
        assert chunked.status == 413  # bounded however the body comes


async def test_a_target_page_takes_any_printable_name(tmp_path, clock):
    async with console(tmp_path, clock, fault=None) as (parts, client):
        odd = "a b/c@ü"
        parts.router.route_alerts(
            [am_alert(starts_at=time.time(), cause="high_failure_rate", component=odd)]
        )
        await parts.orchestrator.run_once()
        now = await (await client.get("/ui")).text()
        assert 'href="/ui/targets/a%20b%2Fc%40%C3%BC"' in now  # one path segment
        page = await client.get("/ui/targets/a%20b%2Fc%40%C3%BC")
        assert page.status == 200
        assert "a b/c@ü: the signal around each action" in await page.text()


# --- acts ----------------------------------------------------------------------------------


async def test_an_act_needs_the_sessions_csrf_token_and_the_same_origin(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        await login(client)
        token = await csrf(client)
        missing = await client.post("/ui/act/freeze", data={"why": "x"}, allow_redirects=False)
        wrong = await client.post(
            "/ui/act/freeze", data={"why": "x", "csrf": token[::-1]}, allow_redirects=False
        )
        elsewhere = await client.post(
            "/ui/act/freeze",
            data={"why": "x", "csrf": token},
            headers={"Origin": "https://evil.example"},
            allow_redirects=False,
        )
        as_json = await client.post(
            "/ui/act/freeze", json={"why": "x", "csrf": token}, allow_redirects=False
        )
        assert [r.status for r in (missing, wrong, elsewhere, as_json)] == [403, 403, 403, 415]
        assert "CSRF" in await missing.text()
        assert parts.orchestrator.envelope.freeze is None


async def test_freeze_and_unfreeze_from_the_console_are_journaled_with_who_and_why(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        await login(client)
        token = await csrf(client)
        frozen = await client.post(
            "/ui/act/freeze", data={"csrf": token, "why": "incident 42", "minutes": "30"}
        )
        assert frozen.status == 200  # the redirect to /ui, followed
        text = await frozen.text()
        assert 'id="flash"' in text
        assert "frozen for 30 min" in text
        assert "badge-frozen" in text
        assert "incident 42" in text
        freeze = parts.orchestrator.envelope.freeze
        assert freeze is not None
        assert freeze.reason == "incident 42"
        assert freeze.until == pytest.approx(clock() + 1800)
        unfrozen = await client.post("/ui/act/unfreeze", data={"csrf": token, "why": "fixed"})
        assert "badge-frozen" not in await unfrozen.text()
        assert parts.orchestrator.envelope.active_freeze(clock()) is None
        journal = await parts.store.recent_control(5)
        routes = [(row["route"], row["body"].get("why"), row["caller"]) for row in journal]
        assert routes[0][:2] == ("console unfreeze", "fixed")
        assert routes[1][:2] == ("console freeze", "incident 42")
        assert routes[0][2].startswith("console admin session ")
        refused = await client.post(
            "/ui/act/freeze", data={"csrf": token, "why": "", "minutes": "x", "extra": "y"}
        )
        assert refused.status == 422
        assert len(await parts.store.recent_control(5)) == 2  # a refused form is not journaled


async def test_a_bad_freeze_duration_is_a_422_naming_the_field(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        await login(client)
        token = await csrf(client)
        for minutes in ("soon", "-5", "1e12", "nan"):
            response = await client.post(
                "/ui/act/freeze", data={"csrf": token, "why": "x", "minutes": minutes}
            )
            assert response.status == 422, minutes
            assert "minutes:" in await response.text()
        no_reason = await client.post("/ui/act/freeze", data={"csrf": token, "why": " "})
        assert no_reason.status == 422
        assert parts.orchestrator.envelope.freeze is None


async def test_dry_run_toggles_and_a_missing_hold_is_said_plainly(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        await login(client)
        token = await csrf(client)
        on = await client.post("/ui/act/dry-run", data={"csrf": token, "enabled": "true"})
        assert "badge-dry-run" in await on.text()
        assert parts.orchestrator.envelope.dry_run is True
        await client.post("/ui/act/dry-run", data={"csrf": token, "enabled": "false"})
        assert parts.orchestrator.envelope.dry_run is False
        none = await client.post("/ui/act/clear-hold", data={"csrf": token, "target": "charter"})
        assert "no hold on charter" in await none.text()


async def test_a_pending_risky_policy_is_approved_from_the_console(tmp_path, clock):
    risky = {
        "planner.actions.scale_up": {
            "cost": 0.2,
            "benefit": 0.8,
            "settle_s": 30,
            "requires_approval": True,
        }
    }
    async with console(tmp_path, clock, **risky) as (parts, client):
        first = await parts.orchestrator.run_once()
        assert first["result"] == "pending_approval"
        [pending] = parts.orchestrator.planner.pending_approvals()
        await login(client)
        now = await (await client.get("/ui")).text()
        assert f'value="{pending.id}"' in now
        assert "pending-row" in now
        token = await csrf(client)
        approved = await client.post(
            "/ui/act/approve", data={"csrf": token, "policy_id": pending.id, "why": "go"}
        )
        assert f"approved {pending.id}" in await approved.text()
        clock.advance(1)
        acted = await parts.orchestrator.run_once()
        assert acted["result"] == "acted"
        again = await client.post("/ui/act/approve", data={"csrf": token, "policy_id": pending.id})
        assert "no pending policy" in await again.text()


async def test_the_result_of_an_act_waits_for_the_page_not_the_live_refresh(tmp_path, clock):
    async with console(tmp_path, clock) as (_parts, client):
        await login(client)
        token = await csrf(client)
        await client.post(
            "/ui/act/dry-run", data={"csrf": token, "enabled": "true"}, allow_redirects=False
        )
        assert 'id="flash"' not in await (await client.get("/ui/panels")).text()
        assert "dry-run on" in await (await client.get("/ui")).text()


async def test_a_redirect_after_an_act_stays_inside_the_console(tmp_path, clock):
    async with console(tmp_path, clock) as (_parts, client):
        await login(client)
        token = await csrf(client)
        for target in ("https://evil.example/", "//evil.example/ui", "/stats"):
            response = await client.post(
                "/ui/act/dry-run",
                data={"csrf": token, "enabled": "false", "next": target},
                allow_redirects=False,
            )
            assert response.headers["Location"] == "/ui", target


async def test_with_a_viewer_token_stats_needs_a_token_too(tmp_path, clock):
    async with console(tmp_path, clock, viewer=VIEWER) as (_parts, client):
        assert (await client.get("/stats")).status == 401
        for token in (VIEWER, ADMIN):
            ok = await client.get("/stats", headers={"Authorization": f"Bearer {token}"})
            assert ok.status == 200
    async with console(tmp_path / "open", clock) as (_parts, client):
        assert (await client.get("/stats")).status == 200  # no viewer token: open as before


# --- the live stream ------------------------------------------------------------------------


async def test_a_new_decision_reaches_an_open_stream(tmp_path, clock):
    async with console(tmp_path, clock) as (parts, client):
        stream = await client.get("/ui/events")
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"retry:")
        record = await parts.orchestrator.run_once()
        event = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
        lines = event.decode().splitlines()
        assert lines[0] == "event: decision"
        data = json.loads(lines[1].removeprefix("data: "))
        assert data["id"] == record["id"]
        assert data["result"] == "acted"
        assert data["causes"] == ["overload/charter"]
        assert data["action"] == "scale_up"
        stream.close()


async def test_streams_are_bounded_and_end_on_shutdown():
    feed = DecisionFeed(max_streams=2)
    slow, other = feed.open(), feed.open()
    assert feed.open() is None  # the third is refused (503 at the edge)
    for i in range(QUEUE_SIZE):
        feed.publish({"id": str(i)})
    assert feed.streams == 2
    feed.publish({"id": "one too many"})
    assert feed.streams == 0  # both fell a full queue behind: dropped, not grown
    assert feed.ended(slow.get_nowait())
    assert feed.ended(other.get_nowait())
    fresh = feed.open()
    await feed.close()
    assert feed.ended(fresh.get_nowait())
    assert feed.open() is None


async def test_one_stream_too_many_is_a_503(tmp_path, clock):
    async with console(tmp_path, clock, **{"server.console.max_streams": 1}) as (_p, client):
        first = await client.get("/ui/events")
        await first.content.readuntil(b"\n\n")
        second = await client.get("/ui/events")
        assert second.status == 503
        assert second.headers["Retry-After"] == "10"
        first.close()
