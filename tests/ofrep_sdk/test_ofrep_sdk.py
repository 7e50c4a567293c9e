"""The official OpenFeature Python SDK with its OFREP provider, pointed at a real Rampart's
`ofrep_listen` (docs/ofrep.md): the answer an application gets for a flag is the backend
the proxy routes the same user to, request by request, across a kill and a config edit.
"""

from __future__ import annotations

import time

import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from conftest import Rampart, wait_for


@pytest.fixture
def client(rampart: Rampart):
    api.set_provider(OFREPProvider(base_url=rampart.ofrep), domain="ofrep-sdk-test")
    yield api.get_client(domain="ofrep-sdk-test")
    api.clear_providers()


def ctx(identity: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=identity)


def test_the_sdk_answer_for_checkout_is_the_backend_the_proxy_routes_each_user_to(rampart, client):
    seen = set()
    for i in range(1000):
        identity = f"user-{i}"
        routed = rampart.routed_backend(identity)
        details = client.get_string_details("checkout", "unset", ctx(identity))
        assert details.error_code is None, (identity, details)
        assert details.value == routed, (identity, details)
        assert details.variant == routed
        assert details.reason == (Reason.SPLIT if routed == "canary" else Reason.DEFAULT)
        assert isinstance(details.flag_metadata["bucket"], int)
        seen.add(routed)
    assert seen == {"stable", "canary"}


def test_a_toggle_resolves_as_a_boolean_and_its_backend_as_a_string(client):
    assert client.get_boolean_value("dark-mode", False, ctx("anyone")) is True
    details = client.get_boolean_details("dark-mode", False, ctx("anyone"))
    assert details.variant == "canary"
    assert client.get_string_value("dark-mode.backend", "unset", ctx("anyone")) == "canary"
    # The toggle's own key is a boolean: read as a string it is a type mismatch, and the
    # SDK returns the code default.
    wrong = client.get_string_details("dark-mode", "unset", ctx("anyone"))
    assert (wrong.value, wrong.error_code) == ("unset", ErrorCode.TYPE_MISMATCH)


def test_an_allowlisted_user_gets_targeting_match(rampart, client):
    details = client.get_string_details("checkout", "unset", ctx("qa-alice"))
    assert (details.value, details.reason) == ("canary", Reason.TARGETING_MATCH)
    assert details.flag_metadata["rampartReason"] == "identity"
    assert rampart.routed_backend("qa-alice") == "canary"


def test_an_unknown_flag_is_flag_not_found(client):
    details = client.get_string_details("no-such-route", "unset", ctx("anyone"))
    assert (details.value, details.error_code) == ("unset", ErrorCode.FLAG_NOT_FOUND)
    assert details.reason == Reason.ERROR


def test_after_a_kill_every_answer_is_stable_and_disabled_then_a_new_percent_is_followed(rampart, client):
    identities = [f"user-{i}" for i in range(300)]
    assert rampart.admin_post("/v1/routes/checkout/kill", "INC-9 canary corrupts carts").status_code == 200
    for identity in identities:
        details = client.get_string_details("checkout", "unset", ctx(identity))
        assert (details.value, details.reason) == ("stable", Reason.DISABLED), identity
        assert rampart.routed_backend(identity) == "stable"
    assert rampart.admin_post("/v1/routes/checkout/unkill", "INC-9 fixed").status_code == 200

    # 30 % -> 70 %: users with buckets 3000..6999 move to canary. One of them is polled
    # until the SDK's answer follows the edit, for at most a second.
    mover = next(
        i for i in identities
        if client.get_string_details("checkout", "unset", ctx(i)).flag_metadata["bucket"] in range(3000, 7000)
    )
    assert client.get_string_value("checkout", "unset", ctx(mover)) == "stable"
    rampart.write_config(70)
    written = time.monotonic()
    wait_for(
        "the SDK's answer to follow the new percent",
        lambda: client.get_string_value("checkout", "unset", ctx(mover)) == "canary",
        timeout=1.0,
        interval=0.01,
    )
    print(f"answer followed the config edit after {time.monotonic() - written:.3f} s")
    canary = 0
    for identity in identities:
        routed = rampart.routed_backend(identity)
        assert client.get_string_value("checkout", "unset", ctx(identity)) == routed, identity
        canary += routed == "canary"
    assert 150 <= canary <= 270, canary
