"""CSV imports that lose nothing (contacts and purchases share one reader): a huge value, a
stray line break, a spreadsheet's header names, a semicolon file, a BOM, and a dry run."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select

from engine.records.csvfile import FIELD_LIMIT
from engine.store.models import Contact, Event, Purchase
from tests.conftest import Project


@pytest.fixture
def program(make_project: Callable[..., Project]) -> Project:
    return make_project()


def stored(project: Project) -> dict[str, Contact]:
    engine = project.engine()
    with engine.db.session() as s:
        found = {c.email: c for c in s.scalars(select(Contact))}
    engine.close()
    return found


def write_bytes(project: Project, name: str, data: bytes) -> str:
    path = project.dir / name
    path.write_bytes(data)
    return str(path)


def test_a_value_over_the_limit_rejects_its_row_and_the_rest_import(program: Project) -> None:
    huge = "x" * (FIELD_LIMIT + 1)
    path = program.contacts(
        "email,first_name,notes\n"
        "a@example.com,Ann,ok\n"
        f"b@example.com,Bob,{huge}\n"
        f'c@example.com,Cy,"{huge}"\n'
        "d@example.com,Dee,fine\n"
    )
    code, out = program.cli("contacts", "import", str(path))
    assert code == 1, out
    assert "2 created" in out and "2 rejected" in out, out
    assert "row 3: notes: a value longer than 131,072 characters" in out, out
    assert "row 4: notes: a value longer than" in out, out
    assert "Traceback" not in out
    assert sorted(stored(program)) == ["a@example.com", "d@example.com"]


def test_purchases_survive_a_huge_value_too(program: Project) -> None:
    program.cli("contacts", "import", str(program.contacts("email\nfay@example.com\n")))
    path = program.write(
        "purchases.csv",
        "email,amount,order_id\n"
        "fay@example.com,10,A-1\n"
        f"fay@example.com,20,{'9' * (FIELD_LIMIT + 5)}\n"
        "fay@example.com,30,A-3\n",
    )
    code, out = program.cli("purchases", "import", str(path))
    assert code == 1, out
    assert "2 recorded" in out and "1 rejected" in out, out
    assert "row 3: order_id: a value longer than" in out, out
    engine = program.engine()
    with engine.db.session() as s:
        assert sorted(s.scalars(select(Purchase.external_id))) == ["A-1", "A-3"]
    engine.close()


@pytest.mark.parametrize("ending", ["\r\n", "\n"], ids=["crlf-file", "lf-file"])
def test_a_stray_carriage_return_rejects_its_row_whole(program: Project, ending: str) -> None:
    lines = [
        "email,first_name,company,timezone,nps_score",
        "ann@example.com,Ann,Acme,UTC,9",
        "zed@example.com,Zed,Zed\rCorp,Europe/Paris,10",
        "bo@example.com,Bo,Bo Ltd,UTC,8",
    ]
    path = write_bytes(program, "cr.csv", ending.join(lines).encode() + ending.encode())
    code, out = program.cli("contacts", "import", path)
    assert code == 1, out
    assert "2 created" in out and "1 rejected" in out, out
    # Its own row number, the lines it spans, and the rows after it keep their numbers.
    assert "row 3 (lines 3-4): a line break inside a value" in out, out
    assert "Corp" not in " ".join(stored(program)), out
    assert sorted(stored(program)) == ["ann@example.com", "bo@example.com"]


def test_a_stray_line_feed_in_a_crlf_file_is_no_new_row(program: Project) -> None:
    data = (
        b"email,first_name,company\r\n"
        b"zed@example.com,Zed,Zed\nCorp\r\n"
        b'q@example.com,Q,"Two\nlines"\r\n'  # quoted: a value with a line break (refused)
        b"ok@example.com,Ok,Fine\r\n"
    )
    code, out = program.cli("contacts", "import", write_bytes(program, "lf.csv", data))
    assert code == 1, out
    assert "row 2 (lines 2-3): a line break inside a value" in out, out
    assert "row 3 (lines 4-5): company: contains a line break" in out, out
    assert "row 4 (line 6)" not in out and "1 created" in out, out


def test_a_short_row_is_rejected_not_half_imported(program: Project) -> None:
    path = program.contacts(
        "email,first_name,company,timezone,nps_score\n"
        "zed@example.com,Zed,Zed\n"
        "Corp,UTC,9\n"
        "ok@example.com,Ok,Acme,UTC,9\n"
    )
    code, out = program.cli("contacts", "import", str(path))
    assert code == 1, out
    assert "row 2: 3 values where the header has 5 columns" in out, out
    assert "row 3: 3 values where the header has 5 columns" in out, out
    assert sorted(stored(program)) == ["ok@example.com"]


def test_spreadsheet_headers_semicolons_and_a_bom(program: Project) -> None:
    data = (
        "\ufeffE-mail;First Name;LAST_NAME;Customer Since;NPS Score;Time zone;Plan\r\n"
        "lia@example.com;Lia;Lund;2025-01-01;9;Europe/Oslo;pro\r\n"
    ).encode()
    code, out = program.cli("contacts", "import", write_bytes(program, "semi.csv", data))
    assert code == 0, out
    assert "1 created" in out and "custom fields from columns: Plan" in out, out
    lia = stored(program)["lia@example.com"]
    assert (lia.first_name, lia.last_name, lia.nps_score, lia.timezone) == (
        "Lia",
        "Lund",
        9,
        "Europe/Oslo",
    )
    assert lia.fields == {"Plan": "pro"}


def test_tabs_are_detected_and_a_missing_email_column_says_what_it_read(program: Project) -> None:
    tabbed = program.contacts("email\tfirst_name\nt@example.com\tTab\n", "tab.csv")
    code, out = program.cli("contacts", "import", str(tabbed))
    assert code == 0 and stored(program)["t@example.com"].first_name == "Tab", out
    none = program.contacts("mail;name\nx@example.com;X\n", "none.csv")
    code, out = program.cli("contacts", "import", str(none))
    assert code == 2, out
    assert "no email column (found 'mail', 'name', read as semicolon-separated)" in out, out


def test_two_columns_for_one_field_are_refused(program: Project) -> None:
    path = program.contacts("email,First Name,first_name\na@example.com,A,B\n", "twice.csv")
    code, out = program.cli("contacts", "import", str(path))
    assert code == 2 and "'First Name' and 'first_name' are the same column" in out, out


def test_a_dry_run_reports_the_same_and_writes_nothing(program: Project) -> None:
    first = program.contacts("email,first_name,nps_score\nold@example.com,Old,7\n", "first.csv")
    program.cli("contacts", "import", str(first))
    path = program.contacts(
        "email,first_name,nps_score,plan\n"
        "old@example.com,Older,9,pro\n"
        "new@example.com,New,10,basic\n"
        "bad@example.com,Bad,11,x\n",
        "second.csv",
    )

    def snapshot() -> tuple[int, int, str | None]:
        engine = program.engine()
        with engine.db.session() as s:
            contacts = s.scalar(select(func.count()).select_from(Contact)) or 0
            events = s.scalar(select(func.count()).select_from(Event)) or 0
            name = s.scalar(select(Contact.first_name).where(Contact.email == "old@example.com"))
        engine.close()
        return contacts, events, name

    before = snapshot()
    code, dry = program.cli("contacts", "import", "--dry-run", str(path))
    assert code == 1, dry
    assert "dry run, nothing written: would be 1 created, 1 updated, 0 unchanged, 1 rejected" in (
        dry
    ), dry
    assert "row 4: nps_score" in dry and "custom fields from columns: plan" in dry, dry
    assert snapshot() == before == (1, 1, "Old")
    code, real = program.cli("contacts", "import", str(path))
    assert "1 created, 1 updated, 0 unchanged, 1 rejected" in real, real
    assert real.replace("dry run, nothing written: would be ", "") == dry.replace(
        "dry run, nothing written: would be ", ""
    )
    assert snapshot()[:1] == (2,)
