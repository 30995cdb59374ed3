"""ssh-test's verdict (checks.Report, checks.summary): an environment passes
only if every step passed; the summary names the ones that fail."""

from __future__ import annotations

from provisioner.checks import Check, Report, summary


def test_a_skipped_step_is_not_a_pass() -> None:
    good = Report("a", (Check("banner", True, "SSH-2.0"), Check("login", True, "agent")))
    skipped = Report("b", (Check("banner", False, "refused"), Check("login", None, "skipped")))
    assert good.ok and good.failed == 0
    assert not skipped.ok and skipped.failed == 1
    assert skipped.public() == {
        "name": "b",
        "ok": False,
        "checks": [
            {"name": "banner", "ok": False, "detail": "refused"},
            {"name": "login", "ok": None, "detail": "skipped"},
        ],
    }


def test_the_summary_names_what_fails() -> None:
    good = Report("a", (Check("banner", True, ""),))
    bad = Report("b", (Check("banner", False, ""),))
    assert summary([good, good]) == "2 of 2 environments pass"
    assert summary([good, bad]) == "1 of 2 environments pass; failing: b"
