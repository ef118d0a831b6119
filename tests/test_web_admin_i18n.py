"""Issue 17.7: every admin page speaks the chosen language, not only its navigation; the CSV stays English.

The words are named here, not read from the catalogs: a page that falls back to English fails."""

from __future__ import annotations

import csv
import html as htmllib
import io
import re

import pytest

from tests.test_web_admin import _add_burnt_hours, flashes, run_sessions
from tests.test_web_auth import login, post
from web import create_app

LAMPS = ("Room 1", "Room 2")
USERS = ("admin", "ann", "bea", "system")
# What the core records in English (the audit log's "why", the fault reason): data, not the page's words.
CORE = ("relay of Room 1 is stuck closed",)

# page -> (words of the chosen language that must be there, English words that must not be)
PAGES = {
    "/admin/log": {
        "de": [
            "Sitzungsprotokoll",
            ">Soll</th>",
            ">Ist</th>",
            "Endgrund",
            "Behandler/in",
            "CSV herunterladen",
            "6 Sitzungen, neueste zuerst",
            "Filtern",
            "fertig",
            "gestoppt",
            "10 Min.",
        ],
        "zh": [
            "疗程日志",
            "计划",
            "实际",
            "结束原因",
            "治疗师",
            "下载 CSV",
            "6 个疗程，最新的在前",
            "筛选",
            "已完成",
            "已停止",
        ],
        "en": [
            "Session log",
            "Planned",
            "Actual",
            "End reason",
            "Practitioner",
            "Download CSV",
            "newest first",
            "Filter",
            "Clear",
            "From",
            "To",
            "Lamp",
            "User",
            "Started",
            "Ended",
            "Times are",
            "completed",
            "stopped",
        ],
    },
    "/admin/usage": {
        "de": [
            "Nutzung",
            "Minuten pro Lampe und Tag",
            "Sitzungen pro Behandler/in",
            "Wie Sitzungen endeten",
            "Dieselben Zahlen als Tabelle",
            "Keine Sitzungen in den letzten 30 Tagen.",
            ">Minuten</text>",
        ],
        "zh": [
            "使用",
            "每盏灯每天的分钟数",
            "每位治疗师的疗程",
            "疗程如何结束",
            "以表格显示相同数据",
            "最近 30 天没有疗程。",
            ">分钟</text>",
        ],
        "en": [
            "Usage",
            "Minutes per lamp",
            "Sessions per practitioner",
            "How sessions ended",
            "same figures",
            "No sessions",
            "Day",
            "minutes",
            "Minutes",
        ],
    },
    "/admin/bulbs": {
        "de": [
            "Birnenstunden",
            "Nennlebensdauer",
            "Birne seit",
            "Birne gewechselt",
            "erste Birne",
            "Weniger als 10 % der Nennlebensdauer übrig",
        ],
        "zh": ["灯泡小时数", "额定寿命", "灯泡启用于", "已更换灯泡", "第一个灯泡", "距额定寿命不足 10 %"],
        "en": [
            "Bulb hours",
            "Hours",
            "Rated life",
            "Bulb since",
            "Bulb replaced",
            "first bulb",
            "Within 10",
            "used",
            "config",
            "warning",
        ],
    },
    "/admin/events": {
        "de": ["Ereignisse", "Wann", "Änderung", "Wer", "Warum", "Alle (und dienstweit)", "aus → Störung"],
        "zh": ["事件", "时间", "变化", "操作人", "原因", "全部（包括整个服务）", "关 → 故障"],
        "en": ["Events", "When", "Change", "Who", "Why", "All", "service-wide", "Filter", "Times are", "off → fault"],
    },
    "/admin/users": {
        "de": [
            "Benutzer",
            "Rolle",
            "Neue PIN",
            "PIN neu setzen",
            "Entfernen",
            "Benutzer hinzufügen",
            "admin (Sie)",
            "Behandler/in",
            "PIN (4 bis 8 Ziffern)",
        ],
        "zh": [
            "用户",
            "角色",
            "新 PIN",
            "重置 PIN",
            "删除",
            "添加用户",
            "admin（您）",
            "治疗师",
            "PIN（4 到 8 位数字）",
        ],
        "en": [
            "Users",
            "Role",
            "New PIN",
            "Reset PIN",
            "Remove",
            "Add a user",
            "Add user",
            "Set role",
            "(you)",
            "practitioner",
            "digits",
        ],
    },
    "/admin/lamps": {
        "de": [
            "Lampen",
            "Zustand",
            "Relais",
            "Grenze",
            "Störung gesperrt",
            "Störung zurücksetzen",
            "Verbindung zum Sicherheits-Mikrocontroller",
            "nicht vorhanden",
            "60 Min.",
        ],
        "zh": ["灯", "状态", "继电器", "上限", "故障锁定", "复位故障", "安全微控制器连接", "未安装", "60 分钟"],
        "en": [
            "Lamps",
            "State",
            "Relay",
            "Limit",
            "Fault latched",
            "Reset fault",
            "Safety microcontroller",
            "absent",
            "fault",
            "off",
            "Times are",
        ],
    },
}


def visible(page: str) -> str:
    """What a person reads or hears: the text between tags, and the labels the tags carry, without the names and
    dates that are data (lamp and user names, ISO times) or the core's English records."""
    labels = " ".join(re.findall(r'(?:data-label|aria-label|title)="([^"]*)"', page))
    text = re.sub(r"(?s)<(script|style)\b.*?</\1>", " ", page)
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", text) + " " + labels)
    for data in (*CORE, *LAMPS, *USERS):
        text = re.sub(rf"(?<!\w){re.escape(data)}(?!\w)", " ", text)
    return re.sub(r"\d{4}-\d\d-\d\d( \d\d:\d\d(:\d\d)?)?", " ", text)


def english_left(page: str, words) -> list[str]:
    text = visible(page)
    return [w for w in words if re.search(rf"(?<![\w]){re.escape(w)}(?![\w])", text)]


@pytest.fixture
def admin(services, clock, users, controller, usage_log):
    app = create_app(services, {"TESTING": True, "SECRET_KEY": "test-key", "LOGIN_CLOCK": clock.monotonic})
    client = app.test_client()
    login(client, "admin", "1234")
    run_sessions(controller, clock, usage_log)
    _add_burnt_hours(usage_log, "room2", 4501)  # within 10 % of its rated life: the warning shows
    controller.fault("relay of Room 1 is stuck closed", "room1")
    usage_log.flush(2)
    return client


@pytest.mark.parametrize("code", ["de", "zh"])
@pytest.mark.parametrize("path", list(PAGES))
def test_admin_page_speaks_the_chosen_language(admin, code, path):
    admin.set_cookie("lampctl_lang", code)
    resp = admin.get(path)
    page = resp.data.decode()
    assert resp.status_code == 200
    assert f'<html lang="{code}">' in page
    missing = [w for w in PAGES[path][code] if htmllib.escape(w, quote=False) not in page and w not in page]
    assert not missing, f"{code} {path}: not shown: {missing}"
    left = english_left(page, PAGES[path]["en"])
    assert not left, f"{code} {path}: still English: {left}"


def test_admin_pages_in_english_keep_their_english_words(admin):
    """The check above is not vacuous: the same English words are there when English is chosen."""
    admin.set_cookie("lampctl_lang", "en")
    for path, words in PAGES.items():
        page = admin.get(path).data.decode()
        assert english_left(page, words["en"]) == words["en"], path


@pytest.mark.parametrize(
    "code, question, detail, button, cancel, english",
    [
        (
            "de",
            "Die Störung von Room 1 zurücksetzen?",
            "Gesperrt seit",
            "Ja, Störung zurücksetzen",
            "Abbrechen",
            ["Reset", "Latched", "Cancel", "Yes", "found and fixed"],
        ),
        (
            "zh",
            "要复位 Room 1 的故障吗？",
            "起锁定",
            "是，复位故障",
            "取消",
            ["Reset", "Latched", "Cancel", "Yes", "fault"],
        ),
    ],
    ids=["de", "zh"],
)
def test_admin_confirmation_speaks_the_chosen_language(admin, code, question, detail, button, cancel, english):
    admin.set_cookie("lampctl_lang", code)
    page = post(admin, "/admin/lamps/room1/reset").data.decode()
    assert f'<h1 id="confirm-q">{question}</h1>' in page
    assert detail in page and f">{button}</button>" in page and f">{cancel}</a>" in page
    assert english_left(page, english) == []


@pytest.mark.parametrize(
    "code, added, removed, refused",
    [
        (
            "de",
            "bea als Behandler/in hinzugefügt.",
            "bea entfernt; Anmeldung und API-Tokens funktionieren ab jetzt nicht mehr.",
            "Ihr eigenes Konto können Sie hier weder entfernen noch herabstufen; bitten Sie einen anderen Admin.",
        ),
        (
            "zh",
            "已添加 bea，角色为治疗师。",
            "已删除 bea；其登录和 API 令牌现已失效。",
            "您不能在此删除或降级自己的账户；请联系另一位管理员。",
        ),
    ],
    ids=["de", "zh"],
)
def test_admin_flash_messages_speak_the_chosen_language(admin, code, added, removed, refused):
    admin.set_cookie("lampctl_lang", code)
    assert post(admin, "/admin/users", name="bea", role="practitioner", pin="1111").status_code == 303
    assert flashes(admin, "/admin/users") == [added]
    post(admin, "/admin/users/bea/remove", confirm="1")
    assert flashes(admin, "/admin/users") == [removed]
    post(admin, "/admin/users/admin/remove")
    assert flashes(admin, "/admin/users") == [refused]


def test_admin_bulb_flash_in_german(admin):
    admin.set_cookie("lampctl_lang", "de")
    post(admin, "/admin/bulbs/room2/replaced", confirm="1")
    assert flashes(admin, "/admin/bulbs") == [
        "Room 2: Birnenwechsel nach 4501.0 h eingetragen; der Zähler beginnt wieder bei 0."
    ]
    post(admin, "/admin/bulbs/attic/replaced")
    assert flashes(admin, "/admin/bulbs") == ["Es gibt keine Lampe 'attic'."]


@pytest.mark.parametrize("code", ["de", "zh"])
def test_admin_csv_stays_english_in_every_language(admin, code):
    admin.set_cookie("lampctl_lang", code)
    resp = admin.get("/admin/log.csv")
    text = resp.get_data(as_text=True)
    resp.close()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [
        "id",
        "lamp_id",
        "user",
        "started_at",
        "ended_at",
        "planned_s",
        "actual_s",
        "end_reason",
        "continues",
        "new_patient",
        "new_patient_by",
    ]
    assert {r[7] for r in rows[1:]} == {"completed", "stopped"}  # codes, not the page's words
