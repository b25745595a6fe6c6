"""The admin-lockout guard: no register, update or retire may leave every admin without the HTTP APIs."""

from __future__ import annotations

import pytest
from symbi_common.errors import ValidationError
from symbi_common.operator_auth import OPERATOR_POLICIES
from symbi_policy.lockout import AdminLockout, admins_allowed

from .conftest import RunningPolicy, example

ADMIN_PERMIT_START = '@id("baseline-operators-admin")'
LOCKOUT = "this change would lock every admin out of the HTTP APIs"


def baseline_without_admins() -> str:
    text = example("baseline")
    start = text.index(ADMIN_PERMIT_START)
    end = text.index('when { principal.role == "admin" };', start) + len('when { principal.role == "admin" };')
    return text[:start] + text[end:]


ADMINS_ONLY = OPERATOR_POLICIES.split('@id("baseline-operators-operate")')[0]
FORBID_ADMIN = (
    '@id("no-admin-api")\nforbid(principal is Operator, action == Action::"api.admin", resource is ApiRoute);\n'
)


def refused(response_json: dict) -> str:
    error = response_json["error"]
    assert error["code"] == "admin_lockout"
    return str(error["message"])


async def test_retiring_or_rewriting_the_baseline_is_refused_when_it_locks_admins_out(policy: RunningPolicy) -> None:
    retire = await policy.http.post("/v1/policy-sets/baseline/retire", json={})
    assert retire.status_code == 409, retire.text
    assert refused(retire.json()).startswith(LOCKOUT)

    update = await policy.http.put("/v1/policy-sets/baseline", json={"cedar": baseline_without_admins()})
    assert update.status_code == 409, update.text
    assert "no policy would permit it" in refused(update.json())

    forbid = await policy.http.post("/v1/policy-sets", json={"set_id": "lock", "cedar": FORBID_ADMIN})
    assert forbid.status_code == 409, forbid.text
    assert "no-admin-api" in refused(forbid.json())

    # Nothing changed: the baseline is still active at revision 1, and the admin still gets in.
    view = (await policy.http.get("/v1/policy-sets/baseline")).json()
    assert (view["status"], view["revision"]) == ("active", 1)
    listing = (await policy.http.get("/v1/policy-sets")).json()
    assert [s["set_id"] for s in listing["items"]] == ["baseline"]


async def test_a_change_that_keeps_an_admin_permit_elsewhere_goes_through(policy: RunningPolicy) -> None:
    created = await policy.http.post("/v1/policy-sets", json={"set_id": "admins", "cedar": ADMINS_ONLY})
    assert created.status_code == 201, created.text
    update = await policy.http.put("/v1/policy-sets/baseline", json={"cedar": baseline_without_admins()})
    assert update.status_code == 200, update.text
    # Now "admins" is the last set that lets admins in: retiring it is refused, over NATS too (typed).
    with pytest.raises(AdminLockout) as err:
        await policy.client.call("policy", "retire", {"set_id": "admins"}, dict)
    assert isinstance(err.value, ValidationError)
    assert LOCKOUT in str(err.value)


async def test_force_lockout_insists_and_the_nats_credential_is_the_way_back(policy: RunningPolicy) -> None:
    view = await policy.client.call("policy", "retire", {"set_id": "baseline", "force_lockout": True}, dict)
    assert view["status"] == "retired"
    assert (await policy.http.get("/v1/policy-sets")).status_code == 403
    # Already locked out: a change that does not fix it is not refused (it is not what locks admins out) ...
    await policy.client.call("policy", "register", {"set_id": "other", "cedar": FORBID_ADMIN}, dict)
    await policy.client.call("policy", "retire", {"set_id": "other"}, dict)
    # ... and registering an admin permit over NATS lets admins back in.
    await policy.client.call("policy", "register", {"set_id": "admins", "cedar": ADMINS_ONLY}, dict)
    assert (await policy.http.get("/v1/policy-sets")).status_code == 200


def test_the_probe_is_the_request_an_admin_route_is_decided_with() -> None:
    from symbi_common.policy.cedar import compile_policies

    assert admins_allowed({"baseline": compile_policies("baseline", example("baseline"))})
    assert not admins_allowed({"baseline": compile_policies("baseline", baseline_without_admins())})
    assert not admins_allowed({})
