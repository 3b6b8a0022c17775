"""HQ validates only a version that waits for it, and not during a maintenance step."""

from __future__ import annotations

import pytest

from goldfleet.domain.model import TemplateStatus, VersionStatus
from goldfleet.domain.sites import check_validation, check_version_enabled
from goldfleet.errors import Conflict


def test_a_pending_version_of_a_ready_template_may_be_validated():
    check_validation("base", 2, VersionStatus.PENDING_VALIDATION, TemplateStatus.READY)


def test_an_enabled_version_is_refused():
    with pytest.raises(Conflict, match="does not wait for validation"):
        check_validation("base", 1, VersionStatus.ENABLED, TemplateStatus.READY)


@pytest.mark.parametrize(
    "status",
    [
        TemplateStatus.MAINTENANCE,
        TemplateStatus.ENTERING_MAINTENANCE,
        TemplateStatus.EXITING_MAINTENANCE,
    ],
)
def test_not_during_maintenance(status):
    with pytest.raises(Conflict, match="once that ends"):
        check_validation("base", 2, VersionStatus.PENDING_VALIDATION, status)


def test_a_pending_version_is_not_used():
    check_version_enabled("base", 1, VersionStatus.ENABLED, "a rebase target")
    with pytest.raises(Conflict, match="waits for HQ's validation: it cannot be a rebase"):
        check_version_enabled("base", 2, VersionStatus.PENDING_VALIDATION, "a rebase target")
